"""Results tables (`clem-icd report`): output folders → one table, a row per (folder, column),
metrics in % as papers report them, ± the sample sd over seeds, [low, high] the bootstrap 95%
interval over notes, and the command that reproduces the row.

A folder is read by what it holds: seeds.json (`clem-icd train --seeds`: mean ± sd of the seeds'
val metrics), else metrics.json with `results` (`clem-icd evaluate`: one row per column), else
metrics.json with val metrics (`clem-icd train`: one row per val section). Its command.json
gives the command column; a folder made before commands were recorded gets an empty one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clem_icd.atomic import write_text_atomic
from clem_icd.errors import ClemError
from clem_icd.evaluation.metrics import METRIC_KEYS
from clem_icd.run_record import read_command_record

SEEDS_FILE = "seeds.json"  # written by clem_icd.training.seeds; read here
METRICS_FILE = "metrics.json"
# The columns of the table: the metrics the ICD coding literature reports (Edin et al. 2023).
REPORT_METRICS = (
    ("f1_micro", "micro-F1"), ("f1_macro", "macro-F1"), ("map", "mAP"),
    ("precision@5", "P@5"), ("precision@8", "P@8"), ("precision@15", "P@15"),
    ("recall@10", "R@10"), ("recall@15", "R@15"), ("precision@recall", "R-prec"),
    ("auc_micro", "AUC micro"), ("auc_macro", "AUC macro"),
)
NOTE = ("Metrics in %. ± the sample standard deviation over seeds; [low, high] the bootstrap 95% "
        "interval over notes.")


@dataclass
class ResultRow:
    """One row: the metrics of one column of one folder (means for a seed group)."""

    folder: str
    column: str
    split: str | None
    threshold: float | None
    metrics: dict[str, float | None]
    sd: dict[str, float | None] = field(default_factory=dict)  # seed groups: sample sd per metric
    seeds: int | None = None  # seed groups: how many seeds
    ci95: dict[str, list[float] | None] = field(default_factory=dict)
    command: str = ""


# ------------------------------------------------------------------------------------- reading


def read_folder(folder: Path | str) -> list[ResultRow]:
    """The rows of one output folder (see the module's notes); ClemError naming the file when
    the folder holds none of the files, or one of them is malformed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClemError(f"{folder}: no such folder")
    record = read_command_record(folder)
    command = record["command"] if record else ""
    seeds_path, metrics_path = folder / SEEDS_FILE, folder / METRICS_FILE
    if seeds_path.is_file():
        return _seed_rows(folder, _read_json(seeds_path), seeds_path, command)
    if metrics_path.is_file():
        data = _read_json(metrics_path)
        if "results" in data:
            return _evaluation_rows(folder, data, metrics_path, command)
        rows = _training_rows(folder, data, metrics_path, command)
        if rows:
            return rows
        raise ClemError(f"{metrics_path}: has neither 'results' (clem-icd evaluate) nor val metrics "
                        "(clem-icd train)")
    raise ClemError(f"{folder}: no {SEEDS_FILE} or {METRICS_FILE} (an output folder of clem-icd evaluate, "
                    "train or train --seeds)")


def read_folders(folders: Iterable[Path | str]) -> list[ResultRow]:
    return [row for folder in folders for row in read_folder(folder)]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ClemError(f"{path}: cannot read it ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise ClemError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ClemError(f"{path}: must hold a JSON object")
    return data


def _number(value, path: Path, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ClemError(f"{path}: {name} must be a number or null")
    return float(value)


def _mapping(value, path: Path, name: str) -> dict:
    if not isinstance(value, dict):
        raise ClemError(f"{path}: {name} must be a JSON object")
    return value


def _metrics(values: dict, path: Path, name: str) -> dict[str, float | None]:
    """The metric values of a column (ci95 and non-metric keys aside)."""
    return {key: _number(values[key], path, f"{name}['{key}']") for key in METRIC_KEYS if key in values}


def _intervals(values, path: Path, name: str) -> dict[str, list[float] | None]:
    out = {}
    for key, interval in _mapping(values, path, name).items():
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2):
            raise ClemError(f"{path}: {name}['{key}'] must be [low, high] or null")
        out[key] = None if interval is None else [_number(v, path, f"{name}['{key}']") for v in interval]
    return out


def _threshold_of(column: str) -> float | None:
    """The threshold a column is named after ('model @ 0.31', 'val@0.5'), else None."""
    _, at, value = column.rpartition("@")
    try:
        return float(value) if at else None
    except ValueError:
        return None


def _evaluation_rows(folder: Path, data: dict, path: Path, command: str) -> list[ResultRow]:
    split = data.get("split")
    rows = []
    for column, values in _mapping(data["results"], path, "'results'").items():
        name = f"results['{column}']"
        values = _mapping(values, path, name)
        ci95 = _intervals(values["ci95"], path, f"{name}['ci95']") if "ci95" in values else {}
        rows.append(ResultRow(str(folder), column, split, _threshold_of(column), _metrics(values, path, name),
                              ci95=ci95, command=command))
    if not rows:
        raise ClemError(f"{path}: 'results' holds no column")
    return rows


def _is_section(value) -> bool:
    return isinstance(value, dict) and any(key in value for key in METRIC_KEYS)


def _training_rows(folder: Path, data: dict, path: Path, command: str) -> list[ResultRow]:
    """metrics.json of a training: a row per section of metrics ('val', 'val@0.5')."""
    rows = []
    tuned = _number(data.get("threshold"), path, "'threshold'")
    for section, values in data.items():
        if not _is_section(values):
            continue
        threshold = _threshold_of(section)
        rows.append(ResultRow(str(folder), section, section.partition("@")[0],
                              tuned if threshold is None else threshold, _metrics(values, path, f"'{section}'"),
                              command=command))
    return rows


def _seed_rows(folder: Path, data: dict, path: Path, command: str) -> list[ResultRow]:
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise ClemError(f"{path}: 'seeds' must be a non-empty list")
    training = _mapping(data.get("training", {}), path, "'training'")
    tuned = training.get("threshold")
    rows = []
    for section, stats in _mapping(data.get("metrics"), path, "'metrics'").items():
        name = f"metrics['{section}']"
        means, sds = {}, {}
        for key, summary in _mapping(stats, path, name).items():
            if key not in METRIC_KEYS:
                continue
            summary = _mapping(summary, path, f"{name}['{key}']")
            means[key] = _number(summary.get("mean"), path, f"{name}['{key}']['mean']")
            sds[key] = _number(summary.get("sd"), path, f"{name}['{key}']['sd']")
        threshold = _threshold_of(section)
        if threshold is None and isinstance(tuned, dict):
            threshold = _number(tuned.get("mean"), path, "training['threshold']['mean']")
        rows.append(ResultRow(str(folder), section, section.partition("@")[0], threshold, means, sd=sds,
                              seeds=len(seeds), command=command))
    if not rows:
        raise ClemError(f"{path}: 'metrics' holds no section")
    return rows


# ------------------------------------------------------------------------------------- writing


def percent(value: float | None, digits: int = 1) -> str:
    """A rate in % as papers print it; undefined as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f}"


def metric_cell(row: ResultRow, key: str) -> str:
    """'45.6', '45.6 ± 0.3' (seed groups), '45.6 [44.1, 47.0]' (bootstrap intervals)."""
    cell = percent(row.metrics.get(key))
    if row.sd.get(key) is not None:
        cell += f" ± {percent(row.sd[key])}"
    interval = row.ci95.get(key)
    if interval is not None:
        cell += f" [{percent(interval[0])}, {percent(interval[1])}]"
    return cell


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str]) -> list[str]:
    """Lines of a Markdown table; `align` per column: 'l' or 'r'. A '|' inside a cell is escaped."""

    def line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line("---" if a == "l" else "---:" for a in align), *map(line, rows)]


def _code(text: str) -> str:
    """`text` as Markdown inline code (empty stays empty); a backtick inside gets a longer fence."""
    if not text:
        return ""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def markdown(rows: Sequence[ResultRow]) -> str:
    header = ["folder", "column", "split", "seeds", "threshold", *(label for _, label in REPORT_METRICS), "command"]
    align = ["l", "l", "l", "r", "r", *("r" for _ in REPORT_METRICS), "l"]
    cells = [[row.folder, row.column, row.split or "", row.seeds or "",
              "" if row.threshold is None else f"{row.threshold:.2f}",
              *(metric_cell(row, key) for key, _ in REPORT_METRICS), _code(row.command)] for row in rows]
    return "\n".join([*markdown_table(header, cells, align), "", NOTE]) + "\n"


def _csv_number(value: float | None, scale: float = 100.0) -> str:
    return "" if value is None or math.isnan(value) else repr(round(scale * value, 6))


def csv_text(rows: Sequence[ResultRow]) -> str:
    """One line per row; each metric in % with its _sd (seed groups) and _low, _high (bootstrap
    interval), empty where the row has none."""
    header = ["folder", "column", "split", "seeds", "threshold"]
    for key, _ in REPORT_METRICS:
        header += [key, f"{key}_sd", f"{key}_low", f"{key}_high"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*header, "command"])
    for row in rows:
        line = [row.folder, row.column, row.split or "", row.seeds or "", _csv_number(row.threshold, 1.0)]
        for key, _ in REPORT_METRICS:
            interval = row.ci95.get(key) or [None, None]
            line += [_csv_number(row.metrics.get(key)), _csv_number(row.sd.get(key)),
                     _csv_number(interval[0]), _csv_number(interval[1])]
        writer.writerow([*line, row.command])
    return buffer.getvalue()


def write_results_table(rows: Sequence[ResultRow], prefix: Path | str) -> tuple[Path, Path]:
    """PREFIX.md and PREFIX.csv (each written atomically)."""
    prefix = Path(prefix)
    md, table = prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".csv")
    write_text_atomic(markdown(rows), md)
    write_text_atomic(csv_text(rows), table)
    return md, table
