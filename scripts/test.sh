#!/usr/bin/env bash
# Builds everything and runs ALL tests: GoogleTest (ctest) for the torch-free kernels, plain and
# under ASan+UBSan; pytest; then the operator tests against an ASan+UBSan build of the extension.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '\n=== %s ===\n' "$*"; }
bash scripts/install.sh pytest expecttest hypothesis nbformat nbclient ipykernel matplotlib
if [ ! -f /usr/src/googletest/CMakeLists.txt ] && ! ls /usr/lib/*/libgtest.a >/dev/null 2>&1; then
  apt-get install -y -q libgtest-dev >/dev/null
fi
CMAKE=$("$PY" -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))")
CTEST=$("$PY" -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'ctest'))")
step "1/4 GoogleTest (tests/cpp)"
"$CMAKE" -S tests/cpp -B build/cpp -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
"$CMAKE" --build build/cpp
"$CTEST" --test-dir build/cpp --output-on-failure
step "2/4 GoogleTest under AddressSanitizer + UndefinedBehaviorSanitizer"
"$CMAKE" -S tests/cpp -B build/cpp-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSAH_SANITIZE=ON >/dev/null
"$CMAKE" --build build/cpp-sanitize
"$CTEST" --test-dir build/cpp-sanitize --output-on-failure
step "3/4 pytest (tests/python)"
"$PY" -m pytest tests/python -q "$@"
step "4/4 operator tests against the extension built with ASan + UBSan (scripts/sanitize_py.sh)"
if ! PYTHON="$PY" bash scripts/sanitize_py.sh; then
  echo "FAILED: sanitized extension tests (a sanitizer report or a test failure is above)" >&2
  exit 1
fi
