#!/usr/bin/env bash
# Installs the build and test requirements, then builds and installs the package (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch: keep an installed one; otherwise take 2.11 (built for CUDA 13, like nvcc 13.0 here).
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.11.0"
fi
# ray[tune]: the benchmark executor's Ray backend and the masker hyperparameter search.
"$PY" -m pip install -q "scikit-build-core>=0.10" "cmake>=3.26" ninja numpy \
  "transformers>=5.0" accelerate gguf safetensors tqdm matplotlib "ray[tune]==2.60.0" "$@"
if ! command -v ccache >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q ccache >/dev/null 2>&1 || true  # optional: faster rebuilds
fi
PYTHON="$PY" bash scripts/build.sh
