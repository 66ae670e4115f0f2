"""Summarise `benchmarks/codiesp_runs.sh` output as a Markdown table.

    python benchmarks/codiesp_report.py runs/codiesp

The evaluation folders are read as `clem-icd report` reads them (clem_icd.evaluation.results_table);
the CodiEsp MAPs and timings are this benchmark's own columns. (`clem-icd report
runs/codiesp/*/eval_dev --out table` gives the protocol's metrics with each row's command.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clem_icd.evaluation.results_table import markdown_table, percent, read_folder

KEYS = ("f1_micro", "f1_macro", "map", "precision@8", "auc_micro")
HEADER = ("recipe", "threshold", "micro-F1", "macro-F1", "mAP", "P@8", "AUC micro", "CodiEsp-D MAP", "CodiEsp-P MAP",
          "best epoch", "epochs run", "s / epoch", "total min")


def main(root: Path) -> None:
    maps: dict[str, dict[str, float]] = {}
    wall: dict[str, int] = {}  # training + evaluation, seconds (codiesp_runs.sh)
    for line in (root / "codiesp_map.jsonl").read_text().splitlines():
        record = json.loads(line)
        maps.setdefault(record["recipe"], {})[record["task"]] = record["codiesp_map"]
        wall[record["recipe"]] = record.get("wall_seconds", 0)
    rows = []
    for recipe, task_maps in maps.items():
        tuned = read_folder(root / recipe / "eval_dev")[0]  # the tuned threshold comes first
        trained = json.loads((root / recipe / "metrics.json").read_text())
        log = root / recipe / "metrics.jsonl"
        # The first epoch also loads and tokenises; report the median of the epochs.
        seconds = sorted(json.loads(line)["train_seconds"] for line in log.read_text().splitlines()) if log.is_file() else []
        per_epoch = f"{seconds[len(seconds) // 2]:.0f}" if seconds else f"{trained.get('train_seconds', 0):.0f} (fit)"
        rows.append([recipe, f"{tuned.threshold:.2f}", *(percent(tuned.metrics.get(k)) for k in KEYS),
                     f"{task_maps.get('D', float('nan')):.3f}", f"{task_maps.get('P', float('nan')):.3f}",
                     trained.get("best_epoch", "–"), len(seconds) or "–", per_epoch, f"{wall[recipe] / 60:.0f}"])
    print("\n".join(markdown_table(HEADER, rows, ["l", *("r" for _ in HEADER[1:])])))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/codiesp"))
