#!/usr/bin/env bash
# The GPU path, proven on a machine with one CUDA GPU (< 8 minutes): installs the gpu extra beside the
# CPU setup, then runs scripts/gpu_check.py (vLLM vs transformers agreement, adapters hot-swapped,
# QLoRA trained, p99 per decision). Usage: scripts/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
if [ ! -x .venv/bin/python ]; then ./setup.sh; fi
.venv/bin/python -c "import vllm, bitsandbytes" 2>/dev/null || .venv/bin/pip install -q -e '.[gpu]'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 470 .venv/bin/python scripts/gpu_check.py --out "$out/gpu_check.json" --home "${TMPDIR:-/tmp}/modelsmith-gpu"
