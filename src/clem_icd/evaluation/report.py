"""Evaluation output: per-code CSV, CodiEsp ranking TSV, metrics JSON and a console table.

Every file is written atomically (clem_icd.atomic), so a reader never sees half a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from clem_icd.atomic import write_json_atomic, write_text_atomic
from clem_icd.evaluation.metrics import METRIC_KEYS

COUNT_KEYS = ("documents", "codes")  # shown as counts, not percentages
INTERVALS = "ci95"  # a column's bootstrap intervals: {metric: [low, high] or None}


def write_per_code_csv(table: pl.DataFrame, path: Path | str) -> None:
    """The per-code table as CSV with a header; null metrics are empty fields."""
    write_text_atomic(table.write_csv(), path)


def write_codiesp_ranking(
    ids: Sequence[str],
    scores: np.ndarray,
    codes: Sequence[str],
    path: Path | str,
    top_k: int | None = None,
) -> None:
    """A ranking in the CodiEsp-D/P submission format: `id<TAB>code` lines, no header, each
    document's codes best first (ties by column order), `top_k` per document or all of them.

    Codes are written lower case, as in the CodiEsp gold files (the scorer lower-cases both sides
    anyway, but matching the gold spelling keeps the file valid for any scorer that does not).
    The scorer reads the first two tab-separated columns and treats every line as a prediction,
    so a header line would be read as a document called 'id'."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape != (len(ids), len(codes)):
        raise ValueError(f"scores of shape {scores.shape} for {len(ids)} ids x {len(codes)} codes")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    lower = [str(code).lower() for code in codes]
    if len(set(lower)) != len(lower):
        raise ValueError("codes must be distinct (ignoring case): the scorer de-duplicates them")
    for text in [*map(str, ids), *lower]:
        if not text or any(ch in text for ch in "\t\r\n"):
            raise ValueError(f"ids and codes must be non-empty and hold no tab or newline: {text!r}")

    ids = [str(doc) for doc in ids]

    def pieces(notes: int = 256):
        # A few notes at a time: MIMIC-IV test's full ranking is 19,802 x 7,942 lines (3.8 GB),
        # which as one list of strings would take several times that in memory.
        for start in range(0, len(ids), notes):
            part = np.asarray(scores[start:start + notes], dtype=np.float64)
            if not np.isfinite(part).all():
                raise ValueError("scores contain NaN or infinity")
            order = np.argsort(-part, axis=1, kind="stable")[:, :top_k]
            yield "".join(f"{doc}\t{lower[j]}\n" for doc, row in zip(ids[start:start + notes], order) for j in row)

    write_text_atomic(pieces(), path)


def json_value(value):
    """Plain JSON: numpy scalars to Python, NaN and infinities to null (JSON has no NaN)."""
    if value is None:
        return None
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def json_tree(value):
    """json_value through mappings and lists (a column's ci95: {metric: [low, high] or None})."""
    if isinstance(value, Mapping):
        return {str(key): json_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_tree(item) for item in value]
    return json_value(value)


def write_metrics_json(metrics: Mapping[str, float], path: Path | str) -> None:
    """The metrics dict as JSON, keys in the given order; undefined values (NaN) as null."""
    write_json_atomic({str(key): json_tree(value) for key, value in metrics.items()}, path)


def _cell(key: str, value) -> str:
    """Percent with one decimal, like papers; counts as integers; undefined as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key in COUNT_KEYS:
        return f"{int(value):,}"
    return f"{100 * float(value):.1f}"


def _interval_cell(key: str, row: Mapping) -> str:
    """The value, and its bootstrap interval when the column has one: '45.6 [44.1, 47.0]'."""
    cell = _cell(key, row.get(key))
    interval = (row.get(INTERVALS) or {}).get(key)
    if interval is None:
        return cell
    return f"{cell} [{_cell(key, interval[0])}, {_cell(key, interval[1])}]"


def render_metrics_table(results: Mapping[str, Mapping[str, float]], console: Console) -> None:
    """One column per model/setting, one row per metric (the protocol's order, then any others);
    a column's bootstrap intervals (its "ci95") beside its values."""
    with_intervals = any(INTERVALS in row for row in results.values())
    # "\\[": a bracket in a rich title would be read as markup.
    title = "Metrics (%)" + (", \\[low, high]: bootstrap 95% interval" if with_intervals else "")
    table = Table(title=title, show_lines=False)
    table.add_column("metric", style="bold")
    for name in results:
        table.add_column(str(name), justify="right")
    keys = [key for key in METRIC_KEYS if any(key in row for row in results.values())]
    for row in results.values():
        keys += [key for key in row if key not in keys and key != INTERVALS]
    for key in keys:
        table.add_row(key, *(_interval_cell(key, row) for row in results.values()))
    console.print(table)
