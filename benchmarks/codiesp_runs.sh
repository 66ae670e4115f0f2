#!/usr/bin/env bash
# Real runs on CodiEsp (train -> val) with the offline MiniLM: laat / cross, random /
# description-initialised label queries, and the TF-IDF baseline. For each: val metrics by the
# Edin protocol (clem-icd evaluate) and the CodiEsp-D / -P MAP of the official scorer's
# definition (../shared/tools/codiesp_map.py) on our ranking file.
#   bash benchmarks/codiesp_runs.sh [OUT_DIR] [RUN ...]
# A RUN is a shipped CodiEsp recipe name (minilm_cross_desc), or one quoted word list
# "NAME=RECIPE key=value ...": the recipe with those overrides, in OUT_DIR/NAME, e.g.
#   bash benchmarks/codiesp_runs.sh runs/codiesp \
#     "whole_512x3=minilm_cross_desc model.max_length=1536 train.epochs=12"
# THREADS=N sets the torch threads of each run (default: torch's own choice); CPUS=LIST pins
# the run to those cores (taskset), so that two runs side by side each own a core and their
# seconds per epoch stay comparable. VAL_FROM_TRAIN=F prepares OUT_DIR/data with that share of
# train as val and dev as test (clem-icd prepare codiesp --val-from-train), for searches that must
# not choose on dev: early stopping and the threshold then use the train share, and the reported
# dev numbers are test numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/codiesp}; shift || true
if [ $# -eq 0 ]; then set -- tfidf minilm_laat minilm_cross minilm_laat_desc minilm_cross_desc; fi
SHARED=../shared
export HF_HUB_OFFLINE=1
if [ -n "${THREADS:-}" ]; then export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS; fi
PIN=(); if [ -n "${CPUS:-}" ]; then PIN=(taskset -c "$CPUS"); fi
mkdir -p "$OUT"
# Every code gets a description without flags (CM: simple-icd-10-cm, PCS: the CMS table of the
# drg package; counts per rule in data/manifest.json "descriptions"), for the *_desc recipes.
SPLIT=val; PREPARE=()
if [ -n "${VAL_FROM_TRAIN:-}" ]; then SPLIT=test; PREPARE=(--val-from-train "$VAL_FROM_TRAIN"); fi
[ -f "$OUT/data/manifest.json" ] || clem-icd -q prepare codiesp --codiesp-dir $SHARED/data/codiesp --out "$OUT/data" "${PREPARE[@]}"
# Valid-code lists so D and P are scored separately, as the two official tracks are.
python - "$OUT/data" <<'PY'
import sys, polars as pl
codes = pl.read_csv(f"{sys.argv[1]}/codes.tsv", separator="\t", infer_schema_length=0)
for system, name in (("icd10cm", "D"), ("icd10pcs", "P")):
    open(f"{sys.argv[1]}/valid_{name}.txt", "w").write("\n".join(codes.filter(pl.col("system") == system)["code"].str.to_lowercase()) + "\n")
PY
for run in "$@"; do
  read -r head overrides <<< "$run"
  name=${head%%=*}; recipe=${head#*=}
  start=$(date +%s)
  # shellcheck disable=SC2086  # the overrides are separate words on purpose
  "${PIN[@]}" clem-icd -q train --config "codiesp/$recipe" --data "$OUT/data" --output "$OUT/$name" $overrides
  "${PIN[@]}" clem-icd -q evaluate --model "$OUT/$name" --data "$OUT/data" --split $SPLIT --out "$OUT/$name/eval_dev" --baseline none > "$OUT/$name/eval_dev.txt"
  for task in D P; do
    map=$(python $SHARED/tools/codiesp_map.py $SHARED/data/codiesp/dev/dev$task.tsv "$OUT/$name/eval_dev/model_ranking.tsv" "$OUT/data/valid_$task.txt")
    echo "{\"recipe\": \"$name\", \"task\": \"$task\", \"codiesp_map\": $map, \"wall_seconds\": $(( $(date +%s) - start ))}" >> "$OUT/codiesp_map.jsonl"
  done
  echo "$name done in $(( $(date +%s) - start )) s"
done
