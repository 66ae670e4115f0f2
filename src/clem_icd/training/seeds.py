"""`clem-icd train --seeds 1,2,3`: one training per seed (OUTPUT/seed-N, train.seed=N), then the
mean ± sample sd (ddof=1) of every metric the trainings wrote, in OUTPUT/seeds.json and
OUTPUT/seeds.md, as papers report runs over several seeds.

Only what each training's metrics.json holds is aggregated (its val sections, the tuned threshold,
the best epoch): test metrics come from `clem-icd evaluate` of each seed's folder.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clem_icd.atomic import write_json_atomic, write_text_atomic
from clem_icd.errors import ClemError
from clem_icd.evaluation.report import COUNT_KEYS, json_value
from clem_icd.evaluation.results_table import METRICS_FILE, SEEDS_FILE, markdown_table, percent
from clem_icd.run_record import read_command_record

SEEDS_TABLE = "seeds.md"


def parse_seeds(text: str) -> list[int]:
    """'1,2,3' → [1, 2, 3]; ClemError for anything but distinct non-negative integers."""
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or any(not part.isdigit() for part in parts):
        raise ClemError(f"--seeds must be comma-separated non-negative integers such as 1,2,3, got '{text}'")
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):
        raise ClemError(f"--seeds: each seed once, got '{text}'")
    return seeds


def check_overrides(overrides: Sequence[str]) -> None:
    """--seeds sets train.seed itself: an override of it would be silently replaced."""
    for item in overrides:
        if item.partition("=")[0].strip() == "train.seed":
            raise ClemError(f"--seeds sets train.seed for each run; drop the override '{item}'")


def seed_folder(output: Path | str, seed: int) -> Path:
    return Path(output) / f"seed-{seed}"


# ---------------------------------------------------------------------------------- aggregation


def summary(values: Sequence) -> dict:
    """{mean, sd, n, values}: over the defined values (a null is a metric undefined in that run);
    sd is the sample standard deviation (ddof=1), null below two defined values."""
    defined = [float(v) for v in values if _is_number(v) and math.isfinite(v)]
    return {"mean": float(np.mean(defined)) if defined else None,
            "sd": float(np.std(defined, ddof=1)) if len(defined) > 1 else None,
            "n": len(defined), "values": [json_value(v) if _is_number(v) else None for v in values]}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def aggregate(runs: Sequence[dict]) -> dict:
    """The metrics.json of each run → {"metrics": {section: {metric: summary}}, "training":
    {key: summary}}: a section is a mapping of metrics ('val', 'val@0.5'), a training key a
    number at the top ('threshold', 'best_epoch')."""
    sections, scalars = {}, []
    for run in runs:
        for key, value in run.items():
            if isinstance(value, dict):
                names = sections.setdefault(key, [])
                names += [name for name, v in value.items() if _is_number(v) and name not in names]
            elif _is_number(value) and key not in scalars:
                scalars.append(key)
    metrics = {section: {name: summary([(run.get(section) or {}).get(name) for run in runs]) for name in names}
               for section, names in sections.items() if names}
    return {"metrics": metrics, "training": {key: summary([run.get(key) for run in runs]) for key in scalars}}


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "–"
    if key in COUNT_KEYS or key == "best_epoch":
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    if key == "threshold":
        return f"{value:.2f}"
    if key.endswith("seconds"):
        return f"{value:,.0f}"
    return percent(value)


def _mean_sd(key: str, stats: dict) -> str:
    cell = _cell(key, stats["mean"])
    return cell if stats["sd"] is None else f"{cell} ± {_cell(key, stats['sd'])}"


def seeds_markdown(seeds: Sequence[int], aggregated: dict, command: str | None = None) -> str:
    lines = [f"# {len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {', '.join(map(str, seeds))}", ""]
    if command:
        lines += [f"`{command}`", ""]
    header = ["metric", "mean ± sd", *(f"seed {seed}" for seed in seeds)]
    align = ["l", "r", *("r" for _ in seeds)]
    groups = [*aggregated["metrics"].items(), ("training", aggregated["training"])]
    for section, stats in groups:
        if not stats:
            continue
        rows = [[key, _mean_sd(key, s), *(_cell(key, v) for v in s["values"])] for key, s in stats.items()]
        lines += [f"## {section}", "", *markdown_table(header, rows, align), ""]
    lines.append("Rates in %; ± the sample standard deviation over the seeds (none for one seed).")
    return "\n".join(lines) + "\n"


def write_seeds_summary(output: Path | str, seeds: Sequence[int], runs: Sequence[dict],
                        command: str | None = None) -> dict:
    """OUTPUT/seeds.json and OUTPUT/seeds.md of the runs' metrics (in the order of `seeds`)."""
    output = Path(output)
    aggregated = aggregate(runs)
    summary_json = {"seeds": list(seeds), "runs": {str(seed): seed_folder(output, seed).name for seed in seeds},
                    **aggregated}
    write_json_atomic(summary_json, output / SEEDS_FILE)
    write_text_atomic(seeds_markdown(seeds, aggregated, command), output / SEEDS_TABLE)
    return summary_json


# ---------------------------------------------------------------------------------- training


def finished(folder: Path, recipe, command: list[str]) -> dict | None:
    """The metrics of a seed's finished training in `folder`, or None when it must be (re)run:
    its command.json (written once a training has finished) records this very command, no
    checkpoint of an unfinished training is there, and a coder's train_config.json is this
    recipe (the command names a recipe file, whose content may have changed)."""
    from clem_icd.training.checkpoints import complete_checkpoints

    record = read_command_record(folder)
    metrics_path = folder / METRICS_FILE
    if record is None or record["command"] != shlex.join(command) or not metrics_path.is_file():
        return None
    if complete_checkpoints(folder):
        return None
    saved = folder / "train_config.json"
    try:
        if saved.is_file() and json.loads(saved.read_text()) != recipe.to_dict():
            return None
        return json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # damaged: train it again


def train_seeds(config: str | None, overrides: Sequence[str], seeds: Sequence[int], data: Path, output: Path, *,
                resume: bool = False, init_from: Path | None = None,
                command_of: Callable[[int], list[str]], on_trained: Callable[[int, Path], None],
                command: str | None = None) -> dict | None:
    """Train each seed into OUTPUT/seed-N (one after another, each as `clem-icd train` would),
    then write the summary. `resume`: each seed folder resumes; a seed whose training finished
    (see `finished`, by `command_of(seed)`) is kept as it is. `on_trained(seed, folder)` runs on
    the main process after each training (the CLI records the command there). Returns the
    summary on the main process, None on the others (under `accelerate launch`)."""
    from accelerate import PartialState

    from clem_icd.training.recipe import load_recipe
    from clem_icd.training.trainer import train as run_training

    if resume not in (False, True):
        raise ClemError("--seeds with --resume PATH: each seed resumes from its own folder; pass a bare --resume")
    check_overrides(overrides)
    # Every recipe is checked before the first training starts.
    recipes = [load_recipe(config, [*overrides, f"train.seed={seed}"]) for seed in seeds]
    main = PartialState().is_main_process
    output = Path(output)
    runs = []
    for seed, recipe in zip(seeds, recipes):
        folder = seed_folder(output, seed)
        metrics = finished(folder, recipe, command_of(seed)) if resume else None
        if metrics is None:
            # A TF-IDF fit has no checkpoints: an unfinished one is fitted again (the trainer
            # refuses --resume for it, which here would stop the seeds that remain).
            metrics = run_training(recipe, data, folder, resume=resume and recipe.kind != "tfidf",
                                   init_from=init_from)
            if main:
                on_trained(seed, folder)
        runs.append(metrics)
    if not main:
        return None
    return write_seeds_summary(output, seeds, runs, command)
