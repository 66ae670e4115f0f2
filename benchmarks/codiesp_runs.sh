#!/usr/bin/env bash
# Real runs on CodiEsp (train -> val) with the offline MiniLM: laat / cross, random /
# description-initialised label queries, and the TF-IDF baseline. For each: val metrics by the
# Edin protocol (clem-icd evaluate) and the CodiEsp-D / -P MAP of the official scorer's
# definition (../shared/tools/codiesp_map.py) on our ranking file.
#   bash benchmarks/codiesp_runs.sh [OUT_DIR] [RECIPE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/codiesp}; shift || true
RECIPES=${*:-"tfidf minilm_laat minilm_cross minilm_laat_desc minilm_cross_desc"}
SHARED=../shared
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
# Every code gets a description without flags (CM: simple-icd-10-cm, PCS: the CMS table of the
# drg package; counts per rule in data/manifest.json "descriptions"), for the *_desc recipes.
[ -f "$OUT/data/manifest.json" ] || clem-icd -q prepare codiesp --codiesp-dir $SHARED/data/codiesp --out "$OUT/data"
# Valid-code lists so D and P are scored separately, as the two official tracks are.
python - "$OUT/data" <<'PY'
import sys, polars as pl
codes = pl.read_csv(f"{sys.argv[1]}/codes.tsv", separator="\t", infer_schema_length=0)
for system, name in (("icd10cm", "D"), ("icd10pcs", "P")):
    open(f"{sys.argv[1]}/valid_{name}.txt", "w").write("\n".join(codes.filter(pl.col("system") == system)["code"].str.to_lowercase()) + "\n")
PY
for recipe in $RECIPES; do
  start=$(date +%s)
  clem-icd -q train --config codiesp/$recipe --data "$OUT/data" --output "$OUT/$recipe"
  clem-icd -q evaluate --model "$OUT/$recipe" --data "$OUT/data" --split val --out "$OUT/$recipe/eval_val" --baseline none > "$OUT/$recipe/eval_val.txt"
  for task in D P; do
    map=$(python $SHARED/tools/codiesp_map.py $SHARED/data/codiesp/dev/dev$task.tsv "$OUT/$recipe/eval_val/model_ranking.tsv" "$OUT/data/valid_$task.txt")
    echo "{\"recipe\": \"$recipe\", \"task\": \"$task\", \"codiesp_map\": $map, \"wall_seconds\": $(( $(date +%s) - start ))}" >> "$OUT/codiesp_map.jsonl"
  done
  echo "$recipe done in $(( $(date +%s) - start )) s"
done
