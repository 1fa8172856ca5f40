#!/usr/bin/env bash
# Rebuilds and reinstalls the package (editable) after a C++/CUDA change; serialised with a lock
# so that several shells can share one build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/sah_build.lock "${PYTHON:-python3}" -m pip install -q --no-build-isolation --no-deps -e . "$@"
