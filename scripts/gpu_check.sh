#!/usr/bin/env bash
# A GPU proof in one command (see scripts/gpu_check.py for the stages):
#
#   bash scripts/gpu_check.sh --wheels WHEEL_DIR --out RESULTS_DIR     # one CUDA GPU, under 7 minutes
#   bash scripts/gpu_check.sh --out RESULTS_DIR --dry-run              # every stage, tiny, on the CPU
#
# Needs only a python3 with PyTorch (PYTHON=... picks another); the project's pure-Python
# dependencies that are missing come from WHEEL_DIR (pip install --no-index --no-deps --target).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$here/gpu_check.py" "$@"
