#!/usr/bin/env bash
# Builds the package and runs the main job on a small default (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python3 -m sparse_attention_hub "$@"
