#!/usr/bin/env bash
# Builds everything and runs ALL tests: GoogleTest (ctest) for the torch-free kernels, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh pytest expecttest hypothesis nbformat nbclient ipykernel matplotlib
if [ ! -f /usr/src/googletest/CMakeLists.txt ] && ! ls /usr/lib/*/libgtest.a >/dev/null 2>&1; then
  apt-get install -y -q libgtest-dev >/dev/null
fi
CMAKE=$("$PY" -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))")
CTEST=$("$PY" -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'ctest'))")
"$CMAKE" -S tests/cpp -B build/cpp -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
"$CMAKE" --build build/cpp
"$CTEST" --test-dir build/cpp --output-on-failure
# The same torch-free kernels under AddressSanitizer + UndefinedBehaviorSanitizer.
"$CMAKE" -S tests/cpp -B build/cpp-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSAH_SANITIZE=ON >/dev/null
"$CMAKE" --build build/cpp-sanitize
"$CTEST" --test-dir build/cpp-sanitize --output-on-failure
"$PY" -m pytest tests/python -q "$@"
