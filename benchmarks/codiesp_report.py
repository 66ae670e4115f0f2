"""Summarise `benchmarks/codiesp_runs.sh` output as a Markdown table.

    python benchmarks/codiesp_report.py runs/codiesp
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ("f1_micro", "f1_macro", "map", "precision@8", "auc_micro")


def main(root: Path) -> None:
    maps: dict[str, dict[str, float]] = {}
    wall: dict[str, int] = {}  # training + evaluation, seconds (codiesp_runs.sh)
    for line in (root / "codiesp_map.jsonl").read_text().splitlines():
        record = json.loads(line)
        maps.setdefault(record["recipe"], {})[record["task"]] = record["codiesp_map"]
        wall[record["recipe"]] = record.get("wall_seconds", 0)
    print("| recipe | threshold | micro-F1 | macro-F1 | mAP | P@8 | AUC micro | CodiEsp-D MAP | CodiEsp-P MAP "
          "| best epoch | epochs run | s / epoch | total min |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for recipe, task_maps in maps.items():
        results = json.loads((root / recipe / "eval_dev" / "metrics.json").read_text())["results"]
        name, metrics = next(iter(results.items()))  # the tuned threshold comes first
        trained = json.loads((root / recipe / "metrics.json").read_text())
        log = root / recipe / "metrics.jsonl"
        # The first epoch also loads and tokenises; report the median of the epochs.
        seconds = sorted(json.loads(line)["train_seconds"] for line in log.read_text().splitlines()) if log.is_file() else []
        per_epoch = f"{seconds[len(seconds) // 2]:.0f}" if seconds else f"{trained.get('train_seconds', 0):.0f} (fit)"
        cells = [f"{100 * metrics[k]:.1f}" for k in KEYS]
        print(f"| {recipe} | {name.split('@')[1].strip()} | {' | '.join(cells)} | {task_maps.get('D', float('nan')):.3f} "
              f"| {task_maps.get('P', float('nan')):.3f} | {trained.get('best_epoch', '–')} | {len(seconds) or '–'} "
              f"| {per_epoch} | {wall[recipe] / 60:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/codiesp"))
