#!/usr/bin/env bash
# ResNet-50 teacher + SLADE student at 224x224 on a GPU: prints images/s of each step.
#   bash benchmarks/gpu_smoke.sh [--steps 300 --batch 64 --workers 8]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi: running on what torch finds"
"${PYTHON:-.venv/bin/python}" benchmarks/gpu_smoke.py "$@"
