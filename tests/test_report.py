"""Evaluation output files and the console table; the CodiEsp ranking is scored by the shared
CodiEsp MAP tool (../shared/tools/codiesp_map.py) as the official scorer defines it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from clem_icd.evaluation import compute_metrics, per_code_table
from clem_icd.evaluation.report import (
    render_metrics_table,
    write_codiesp_ranking,
    write_metrics_json,
    write_per_code_csv,
)

# Our code spellings (canonical: upper case, dotted CM) against CodiEsp gold (lower case).
CODES = ["R52", "N39.0", "Q62.11", "BT41ZZZ"]
IDS = ["S1", "S2"]
GOLD = "S1\tn39.0\nS1\tr52\nS1\tbt41zzz\nS2\tq62.11\n"
SCORES = np.array([
    # R52  N39.0 Q62.11 BT41ZZZ
    [0.9, 0.2, 0.5, 0.1],   # S1 ranks r52, q62.11, n39.0, bt41zzz: gold at 1, 3 and 4
    [0.3, 0.4, 0.35, 0.8],  # S2 ranks bt41zzz, n39.0, q62.11, r52: gold at 3
])
# CodiEsp AP = sum of the precision at each gold rank / number of gold codes:
#   S1: (1/1 + 2/3 + 3/4) / 3 = 29/36;  S2: (1/3) / 1 = 12/36;  MAP = 41/72 = 0.5694
# top_k = 2: S1 keeps r52, q62.11 -> (1/1) / 3 = 1/3; S2 keeps bt41zzz, n39.0 -> 0; MAP = 1/6
TARGETS = np.array([[1, 1, 0, 1], [0, 0, 1, 0]])  # GOLD as a matrix over CODES


@pytest.fixture
def codiesp_map(shared_data):
    """Run the shared CodiEsp MAP tool on GOLD and a prediction file → its printed MAP."""
    tool = shared_data.parent / "tools" / "codiesp_map.py"
    if not tool.exists():
        pytest.skip(f"{tool} is absent")
    check = subprocess.run([sys.executable, "-c", "import pandas"], capture_output=True)
    if check.returncode != 0:
        reason = "the CodiEsp MAP tool needs pandas, which this interpreter lacks"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)

    def score(gold_path, pred_path) -> float:
        done = subprocess.run(
            [sys.executable, str(tool), str(gold_path), str(pred_path)],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return float(done.stdout.strip())

    return score


def test_codiesp_ranking_file_format(tmp_path):
    path = tmp_path / "pred.tsv"
    write_codiesp_ranking(IDS, SCORES, CODES, path)
    assert path.read_text() == (
        "S1\tr52\nS1\tq62.11\nS1\tn39.0\nS1\tbt41zzz\n"
        "S2\tbt41zzz\nS2\tn39.0\nS2\tq62.11\nS2\tr52\n"
    )
    write_codiesp_ranking(IDS, SCORES, CODES, path, top_k=1)
    assert path.read_text() == "S1\tr52\nS2\tbt41zzz\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.tsv"]  # no temporary file left


def test_codiesp_ranking_ties_keep_column_order(tmp_path):
    path = tmp_path / "pred.tsv"
    write_codiesp_ranking(["D"], np.array([[0.5, 0.7, 0.5]]), ["A", "B", "C"], path)
    assert path.read_text() == "D\tb\nD\ta\nD\tc\n"


def test_codiesp_perfect_ranking_scores_one(tmp_path, codiesp_map):
    gold = tmp_path / "gold.tsv"
    gold.write_text(GOLD)
    pred = tmp_path / "pred.tsv"
    write_codiesp_ranking(IDS, TARGETS + 0.1 * np.arange(4)[::-1] / 4, CODES, pred)
    assert codiesp_map(gold, pred) == 1.0


def test_codiesp_constructed_ranking_scores_hand_map(tmp_path, codiesp_map):
    gold = tmp_path / "gold.tsv"
    gold.write_text(GOLD)
    pred = tmp_path / "pred.tsv"
    write_codiesp_ranking(IDS, SCORES, CODES, pred)
    assert codiesp_map(gold, pred) == pytest.approx(41 / 72, abs=1e-4)  # printed to 4 decimals
    # Every code occurs in GOLD, so nothing is filtered and our mAP is the CodiEsp MAP.
    assert compute_metrics(SCORES, TARGETS, 0.5)["map"] == pytest.approx(41 / 72)
    write_codiesp_ranking(IDS, SCORES, CODES, pred, top_k=2)
    assert codiesp_map(gold, pred) == pytest.approx(1 / 6, abs=1e-4)


@pytest.mark.parametrize(
    "ids, codes, top_k, message",
    [
        (["S1"], CODES, None, "shape"),
        (IDS, ["A", "a", "B", "C"], None, "distinct"),
        (["S\t1", "S2"], CODES, None, "tab"),
        (IDS, CODES, 0, "top_k"),
    ],
)
def test_codiesp_ranking_rejects_bad_input(tmp_path, ids, codes, top_k, message):
    with pytest.raises(ValueError, match=message):
        write_codiesp_ranking(ids, SCORES, codes, tmp_path / "x.tsv", top_k=top_k)
    assert not (tmp_path / "x.tsv").exists()


def test_metrics_json_round_trip(tmp_path):
    metrics = compute_metrics(SCORES, TARGETS, 0.5) | {"auc_macro": float("nan")}
    metrics["codes"] = np.int64(metrics["codes"])
    path = tmp_path / "out" / "metrics.json"
    write_metrics_json(metrics, path)
    loaded = json.loads(path.read_text())  # strict JSON: NaN would not be valid
    assert list(loaded) == list(metrics)
    assert loaded["auc_macro"] is None
    assert loaded["codes"] == 4 and isinstance(loaded["codes"], int)
    assert loaded["map"] == pytest.approx(41 / 72)
    assert "NaN" not in path.read_text()


def test_per_code_csv_round_trip(tmp_path):
    scores = np.hstack([SCORES, [[0.6], [0.1]]])
    targets = np.hstack([TARGETS, [[0], [0]]])
    table = per_code_table(scores, targets, 0.5, [*CODES, "Z99.9"], ["pain", "uti", "q", "b", "z"])
    path = tmp_path / "per_code.csv"
    write_per_code_csv(table, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "code,description,support,precision,recall,f1,ap"
    assert lines[-1] == "Z99.9,z,0,,,,"  # no positive in this split: null metrics
    loaded = pl.read_csv(path)
    assert loaded["code"].to_list() == table["code"].to_list()
    assert loaded["f1"].to_list() == pytest.approx(table["f1"].to_list(), nan_ok=True)


def test_render_metrics_table():
    tuned = compute_metrics(SCORES, TARGETS, 0.37)
    default = compute_metrics(SCORES, TARGETS, 0.5) | {"auc_macro": float("nan")}
    console = Console(record=True, width=200)
    render_metrics_table({"clem-icd @0.37": tuned, "clem-icd @0.5": default}, console)
    text = console.export_text()
    assert "clem-icd @0.37" in text and "clem-icd @0.5" in text
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in text.splitlines() if line.count("│") == 4}
    assert rows["map"] == ["56.9"] * 2  # 41/72 in percent with one decimal
    assert rows["f1_micro"][1] == f"{100 * default['f1_micro']:.1f}"
    assert rows["auc_macro"][1] == "–"  # undefined
    assert rows["documents"] == ["2", "2"] and rows["codes"] == ["4", "4"]
    assert list(rows)[0] == "f1_micro"  # the protocol's order


def test_render_metrics_table_keeps_extra_keys():
    console = Console(record=True, width=120)
    render_metrics_table({"a": {"f1_micro": 0.5, "loss": 0.25}, "b": {"f1_micro": 0.25}}, console)
    text = console.export_text()
    assert "loss" in text and "25.0" in text
