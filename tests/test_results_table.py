"""`clem-icd evaluate --bootstrap` and `clem-icd report`: intervals in metrics.json that hold
their values and are paired across columns, the recorded command that reproduces a folder, the
results table's CSV and Markdown read back, and one-line errors for bad folders."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import statistics

import pytest

from clem_icd.data.synthetic import make_synthetic_dataset
from clem_icd.errors import ClemError
from clem_icd.evaluation.bootstrap import INTERVAL_KEYS
from clem_icd.evaluation.results_table import (
    REPORT_METRICS,
    read_folder,
    read_folders,
    write_results_table,
)
from clem_icd.run_record import write_command_record
from clem_icd.training.seeds import write_seeds_summary


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic_dataset(path, n_documents=80, n_codes=10, seed=1)
    return path


@pytest.fixture(scope="module")
def tfidf_model(corpus, tmp_path_factory):
    """A trained model folder in a second (the TF-IDF recipe)."""
    from clem_icd.training.recipe import load_recipe
    from clem_icd.training.trainer import train

    path = tmp_path_factory.mktemp("tfidf") / "model"
    train(load_recipe(None, ["model.kind=tfidf"]), corpus, path)
    return path


def test_bootstrap_intervals_hold_their_values_and_are_paired_across_columns(corpus, tfidf_model, tmp_path, run):
    out = tmp_path / "eval"
    code, stdout, err = run("evaluate", "--model", tfidf_model, "--data", corpus, "--out", out,
                            "--bootstrap", "100", "--bootstrap-seed", "3")
    assert code in (0, None), err
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["bootstrap"] == {"resamples": 100, "seed": 3, "confidence": 0.95, "over": "notes"}
    columns = saved["results"]
    assert len(columns) == 4  # model and the auto baseline, each at its threshold and at 0.5
    for name, metrics in columns.items():
        assert set(metrics["ci95"]) == set(INTERVAL_KEYS), name
        for key, interval in metrics["ci95"].items():
            if interval is None:
                assert metrics[key] is None
                continue
            low, high = interval
            assert low <= metrics[key] <= high, (name, key)
    # The model is a TF-IDF fit with the baseline's default options: the same scores, and with
    # the same resamples (paired) the same intervals.
    names = list(columns)
    assert columns[names[0]]["ci95"] == columns[names[2]]["ci95"]
    per_model = json.loads((out / "model_metrics.json").read_text())
    assert per_model["ci95"] == columns[names[0]]["ci95"]
    assert json.loads((out / "model_metrics@0.5.json").read_text())["ci95"] == columns[names[1]]["ci95"]
    assert re.search(r"f1_micro\s+│\s+[\d.]+ \[[\d.]+,", stdout), stdout  # (an 80-column console wraps)
    assert "bootstrap 95% interval" in stdout

    # Another seed draws other notes; no --bootstrap, no intervals.
    other = tmp_path / "other"
    code, _, err = run("evaluate", "--model", tfidf_model, "--data", corpus, "--out", other, "--baseline", "none",
                       "--bootstrap", "100", "--bootstrap-seed", "4")
    assert code in (0, None), err
    assert json.loads((other / "metrics.json").read_text())["results"][names[0]]["ci95"] != columns[names[0]]["ci95"]
    plain = tmp_path / "plain"
    code, _, err = run("evaluate", "--model", tfidf_model, "--data", corpus, "--out", plain, "--baseline", "none")
    assert code in (0, None), err
    assert "bootstrap" not in json.loads((plain / "metrics.json").read_text())
    assert all("ci95" not in m for m in json.loads((plain / "metrics.json").read_text())["results"].values())


def test_the_recorded_command_reproduces_the_evaluation(corpus, tfidf_model, tmp_path, run):
    out = tmp_path / "eval"
    code, _, err = run("evaluate", "-m", tfidf_model, "--data", corpus, "-o", out, "--split", "val",
                       "--baseline", "none", "--bootstrap", "20")
    assert code in (0, None), err
    record = json.loads((out / "command.json").read_text())
    assert record["argv"] == ["clem-icd", "evaluate", "--model", str(tfidf_model), "--data", str(corpus),
                              "--split", "val", "--out", str(out), "--baseline", "none", "--bootstrap", "20"]
    assert shlex.split(record["command"]) == record["argv"]
    first = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").unlink()
    code, _, err = run(*record["argv"][1:])
    assert code in (0, None), err
    assert json.loads((out / "metrics.json").read_text()) == first


def _evaluation_folder(path, command="clem-icd evaluate --model m --data d --out e"):
    path.mkdir(parents=True)
    tuned = {"f1_micro": 0.5123, "f1_macro": 0.2011, "map": 0.6012, "precision@8": 0.7, "auc_micro": None,
             "documents": 40, "ci95": {"f1_micro": [0.48, 0.54], "map": [0.57, 0.63], "auc_micro": None}}
    (path / "metrics.json").write_text(json.dumps({"split": "test", "results": {
        "model @ 0.31": tuned, "model @ 0.50": {"f1_micro": 0.45, "map": 0.6012}}}))
    write_command_record(path, shlex.split(command))
    return tuned


def _parse_markdown(text):
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    assert set(lines[1].strip("| ").split(" | ")) <= {"---", "---:"}
    return [dict(zip(header, (cell.strip() for cell in line[2:-2].split(" | ")))) for line in lines[2:]]


def test_results_table_rows_read_back_from_csv_and_markdown(tmp_path):
    tuned = _evaluation_folder(tmp_path / "eval")
    runs = [{"threshold": t, "val": {"f1_micro": f, "map": m}, "val@0.5": {"f1_micro": f - 0.1, "map": m}}
            for t, f, m in ((0.3, 0.41, 0.55), (0.34, 0.44, 0.57), (0.32, 0.43, 0.52))]
    (tmp_path / "seeds").mkdir()
    write_seeds_summary(tmp_path / "seeds", [1, 2, 3], runs)
    write_command_record(tmp_path / "seeds", ["clem-icd", "train", "--seeds", "1,2,3", "--output", "seeds"])
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metrics.json").write_text(json.dumps({"best_epoch": 2, "threshold": 0.27,
                                                                 "val": {"f1_micro": 0.4, "map": 0.5},
                                                                 "val@0.5": {"f1_micro": 0.3, "map": 0.5}}))
    rows = read_folders([tmp_path / "eval", tmp_path / "seeds", tmp_path / "train"])
    assert [(r.column, r.split) for r in rows] == [("model @ 0.31", "test"), ("model @ 0.50", "test"),
                                                   ("val", "val"), ("val@0.5", "val"), ("val", "val"),
                                                   ("val@0.5", "val")]
    md_path, csv_path = write_results_table(rows, tmp_path / "out" / "table")
    assert (md_path.name, csv_path.name) == ("table.md", "table.csv")

    table = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(table) == 6
    first = table[0]
    assert first["folder"] == str(tmp_path / "eval") and first["threshold"] == "0.31"
    assert float(first["f1_micro"]) == pytest.approx(100 * tuned["f1_micro"], abs=1e-4)
    assert (float(first["f1_micro_low"]), float(first["f1_micro_high"])) == pytest.approx((48.0, 54.0))
    assert first["f1_micro_sd"] == "" and first["auc_micro"] == "" and first["auc_micro_low"] == ""
    assert first["command"] == "clem-icd evaluate --model m --data d --out e"
    seeds_val = table[2]
    f1 = [0.41, 0.44, 0.43]
    assert seeds_val["seeds"] == "3"
    assert float(seeds_val["f1_micro"]) == pytest.approx(100 * statistics.mean(f1), abs=1e-4)
    assert float(seeds_val["f1_micro_sd"]) == pytest.approx(100 * statistics.stdev(f1), abs=1e-4)
    assert float(seeds_val["threshold"]) == pytest.approx(statistics.mean([0.3, 0.34, 0.32]))
    assert table[3]["threshold"] == "0.5"
    assert seeds_val["command"] == "clem-icd train --seeds 1,2,3 --output seeds"
    assert table[4]["threshold"] == "0.27" and table[4]["command"] == ""  # no command.json: older folder

    md = _parse_markdown(md_path.read_text())
    labels = [label for _, label in REPORT_METRICS]
    assert list(md[0]) == ["folder", "column", "split", "seeds", "threshold", *labels, "command"]
    assert md[0]["micro-F1"] == "51.2 [48.0, 54.0]" and md[0]["mAP"] == "60.1 [57.0, 63.0]"
    assert md[0]["AUC micro"] == "–" and md[0]["P@8"] == "70.0"
    assert md[0]["command"] == "`clem-icd evaluate --model m --data d --out e`"
    assert md[2]["micro-F1"] == f"{100 * statistics.mean(f1):.1f} ± {100 * statistics.stdev(f1):.1f}"
    assert md[2]["seeds"] == "3" and md[4]["seeds"] == ""


def test_a_pipe_in_a_command_does_not_break_the_markdown_table(tmp_path):
    _evaluation_folder(tmp_path / "eval", command="clem-icd evaluate --out 'a|b'")
    md, _ = write_results_table(read_folder(tmp_path / "eval"), tmp_path / "t")
    row = _parse_markdown(md.read_text().replace("\\|", "¦"))[0]
    assert row["command"] == "`clem-icd evaluate --out 'a¦b'`"


@pytest.mark.parametrize("setup, names", [
    (lambda p: None, "no seeds.json or metrics.json"),
    (lambda p: (p / "metrics.json").write_text("{not json"), "metrics.json: not valid JSON"),
    (lambda p: (p / "metrics.json").write_text("[1, 2]"), "metrics.json: must hold a JSON object"),
    (lambda p: (p / "metrics.json").write_text('{"best_epoch": 3}'), "metrics.json: has neither"),
    (lambda p: (p / "metrics.json").write_text('{"results": {"m": {"map": "high"}}}'), "results['m']['map']"),
    (lambda p: (p / "metrics.json").write_text('{"results": {"m": {"map": 0.5, "ci95": {"map": [0.4]}}}}'),
     "['ci95']['map'] must be [low, high]"),
    (lambda p: (p / "seeds.json").write_text('{"seeds": []}'), "seeds.json: 'seeds' must be"),
    (lambda p: ((p / "metrics.json").write_text('{"val": {"map": 0.5}}'), (p / "command.json").write_text("{")),
     "command.json: cannot read it as JSON"),
])
def test_bad_folders_are_refused_naming_the_file(tmp_path, setup, names):
    folder = tmp_path / "run"
    folder.mkdir()
    setup(folder)
    with pytest.raises(ClemError, match=re.escape(names)) as error:
        read_folder(folder)
    assert str(folder) in str(error.value)


def test_report_cli_writes_both_files_and_bad_input_is_one_line(tmp_path, run):
    _evaluation_folder(tmp_path / "eval")
    code, stdout, err = run("report", tmp_path / "eval", "--out", tmp_path / "table")
    assert code in (0, None), err
    assert (tmp_path / "table.md").read_text() == stdout
    assert len(list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))) == 2
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text('{"split": "test", "results": ')
    code, _, err = run("report", tmp_path / "eval", tmp_path / "broken", "--out", tmp_path / "again")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "broken" / "metrics.json") in err
    assert not (tmp_path / "again.md").exists()  # nothing is written unless every folder reads
