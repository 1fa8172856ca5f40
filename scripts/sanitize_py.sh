#!/usr/bin/env bash
# Builds the torch extension CPU-only with AddressSanitizer + UndefinedBehaviorSanitizer into
# build/py-sanitize and runs the operator tests against it; any finding fails the run.
# Usage: bash scripts/sanitize_py.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
CMAKE=$("$PY" -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))")
BUILD=build/py-sanitize
CXX=${CXX:-g++}
SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"

# The target's own -O3 comes after these flags; -g1 keeps line numbers in the reports. The
# configure log (torch's CMake warns a lot) is shown only if configuring fails. Builds of the
# shared build directory are serialised with a lock, as in scripts/build.sh.
exec 9>/tmp/sah_py_sanitize.lock
flock 9
mkdir -p "$BUILD"
if ! "$CMAKE" -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAH_WITH_CUDA=OFF \
  -DCMAKE_CXX_COMPILER="$CXX" -DPython_EXECUTABLE="$(command -v "$PY")" \
  -DCMAKE_CXX_FLAGS="$SANITIZE -g1" -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  >"$BUILD/configure.log" 2>&1; then
  cat "$BUILD/configure.log"
  exit 1
fi
"$CMAKE" --build "$BUILD"

# A copy of the Python package with the sanitized _C next to it, imported ahead of the installed
# (editable) package: the runner below drops scikit-build's editable finder from sys.meta_path.
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
cp -r sparse_attention_hub "$SITE/"
find "$SITE/sparse_attention_hub" \( -name '__pycache__' -o -name '_C.*.so' \) -prune \
  -exec rm -rf {} +
cp "$BUILD"/_C.*.so "$SITE/sparse_attention_hub/"
flock -u 9

LIBASAN=$("$CXX" -print-file-name=libasan.so)
LIBUBSAN=$("$CXX" -print-file-name=libubsan.so)
TESTS=(test_attention_ops test_mask_rows_ops test_fixed_masker_ops test_page_maskers
       test_learned_maskers test_sampling_maskers test_properties)
ARGS=()
for t in "${TESTS[@]}"; do ARGS+=("$ROOT/tests/python/$t.py"); done

cd "$SITE"
# detect_leaks=0: CPython and torch keep allocations alive until exit by design.
# Both runtimes abort on the first finding (-fno-sanitize-recover=all, halt_on_error=1).
LD_PRELOAD="$LIBASAN $LIBUBSAN" \
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
SAH_SANITIZED_EXTENSION="$SITE/sparse_attention_hub" \
PYTHONDONTWRITEBYTECODE=1 \
"$PY" - "${ARGS[@]}" -q -p no:cacheprovider --rootdir "$ROOT" -c "$ROOT/pyproject.toml" \
  --capture=sys -m "not gpu" "$@" <<'EOF'
import os
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, os.getcwd())
import sparse_attention_hub._C as C  # noqa: E402

expected = os.environ["SAH_SANITIZED_EXTENSION"]
print(f"sanitized extension: {C.__file__}", flush=True)
if os.path.dirname(C.__file__) != expected:
    sys.exit(f"imported {C.__file__}, expected the sanitized build under {expected}")
with open("/proc/self/maps") as maps:
    if "libasan" not in maps.read():
        sys.exit("the AddressSanitizer runtime is not loaded")

import pytest  # noqa: E402

sys.exit(pytest.main(sys.argv[1:]))
EOF
