"""`clem-icd train --seeds`: mean and sample sd against the statistics module, seeds.json and
seeds.md read back, one folder per seed with its own reproducing command, --resume keeping
finished seeds, and the refusals."""

from __future__ import annotations

import json
import shlex
import statistics

import numpy as np
import pytest
from model_fixtures import minilm_path, tiny_bert

from clem_icd.data.synthetic import make_synthetic_dataset
from clem_icd.errors import ClemError
from clem_icd.training.seeds import (
    aggregate,
    check_overrides,
    parse_seeds,
    summary,
    write_seeds_summary,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic_dataset(path, n_documents=80, n_codes=10, seed=1)
    return path


def test_mean_and_sample_sd_are_those_of_the_statistics_module():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        values = rng.random(n).tolist()
        got = summary(values)
        assert got["mean"] == pytest.approx(statistics.mean(values), abs=1e-15)
        assert got["sd"] == pytest.approx(statistics.stdev(values), abs=1e-15)  # ddof=1
        assert got["n"] == n and got["values"] == values
    assert summary([0.25]) == {"mean": 0.25, "sd": None, "n": 1, "values": [0.25]}
    # An undefined value (null in metrics.json) is left out of the mean and sd, kept in values.
    got = summary([0.2, None, 0.4, float("nan")])
    assert got["mean"] == pytest.approx(0.3) and got["sd"] == pytest.approx(statistics.stdev([0.2, 0.4]))
    assert got["n"] == 2 and got["values"] == [0.2, None, 0.4, None]
    assert summary([None])["mean"] is None


def test_aggregate_takes_every_section_of_metrics_and_the_numbers_of_the_run():
    runs = [{"best_epoch": 3, "threshold": 0.3, "val": {"map": 0.5, "f1_micro": 0.4}, "val@0.5": {"map": 0.5},
             "dataset": {"fingerprint": "abc", "path": "data"}},
            {"best_epoch": 4, "threshold": 0.4, "val": {"map": 0.6, "f1_micro": None}, "val@0.5": {"map": 0.6},
             "dataset": {"fingerprint": "abc", "path": "data"}}]
    got = aggregate(runs)
    assert set(got["metrics"]) == {"val", "val@0.5"}  # the dataset record holds no numbers
    assert got["metrics"]["val"]["map"]["sd"] == pytest.approx(statistics.stdev([0.5, 0.6]))
    assert got["metrics"]["val"]["f1_micro"] == {"mean": 0.4, "sd": None, "n": 1, "values": [0.4, None]}
    assert got["training"]["best_epoch"]["mean"] == 3.5
    assert got["training"]["threshold"]["sd"] == pytest.approx(statistics.stdev([0.3, 0.4]))


def test_seeds_files_read_back(tmp_path):
    runs = [{"threshold": t, "val": {"f1_micro": f, "map": m, "documents": 12}}
            for t, f, m in ((0.31, 0.451, 0.61), (0.29, 0.463, 0.63), (0.33, 0.449, 0.60))]
    written = write_seeds_summary(tmp_path, [1, 2, 3], runs, command="clem-icd train --seeds 1,2,3")
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved == written and saved["seeds"] == [1, 2, 3]
    assert saved["runs"] == {"1": "seed-1", "2": "seed-2", "3": "seed-3"}
    rows = {}
    for line in (tmp_path / "seeds.md").read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| metric") and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    f1 = [0.451, 0.463, 0.449]
    assert rows["f1_micro"] == [f"{100 * statistics.mean(f1):.1f} ± {100 * statistics.stdev(f1):.1f}",
                                "45.1", "46.3", "44.9"]
    assert rows["documents"] == ["12 ± 0", "12", "12", "12"]  # a count, not a rate
    assert rows["threshold"][0] == f"{statistics.mean([0.31, 0.29, 0.33]):.2f} ± 0.02"
    assert "`clem-icd train --seeds 1,2,3`" in (tmp_path / "seeds.md").read_text()


def test_seed_lists_and_overrides_are_checked():
    assert parse_seeds("1,2, 3") == [1, 2, 3]
    assert parse_seeds("7") == [7]
    for bad in ("", "1,,2", "a", "1,-2", "1.5", "1,1"):
        with pytest.raises(ClemError, match="--seeds"):
            parse_seeds(bad)
    check_overrides(["train.epochs=2", "model.kind=tfidf"])
    with pytest.raises(ClemError, match="train.seed"):
        check_overrides(["train.epochs=2", " train.seed = 3"])


def test_train_seeds_through_the_cli(corpus, tmp_path, run):
    """The plumbing on the TF-IDF recipe (seconds): a folder per seed with its own command, the
    summary, the group's command, --resume keeping what finished."""
    out = tmp_path / "runs"
    code, _, err = run("train", "--data", corpus, "--output", out, "--seeds", "1,2", "model.kind=tfidf")
    assert code in (0, None), err
    for seed in (1, 2):
        record = json.loads((out / f"seed-{seed}" / "command.json").read_text())
        assert record["command"] == shlex.join(["clem-icd", "train", "--data", str(corpus), "--output",
                                                str(out / f"seed-{seed}"), "model.kind=tfidf", f"train.seed={seed}"])
        assert record["argv"] == shlex.split(record["command"]) and record["seed"] == seed
        assert record["clem_icd_version"] and record["time"]
    group = json.loads((out / "command.json").read_text())
    assert group["command"] == shlex.join(["clem-icd", "train", "--data", str(corpus), "--output", str(out),
                                           "--seeds", "1,2", "model.kind=tfidf"])
    summary_json = json.loads((out / "seeds.json").read_text())
    metrics = [json.loads((out / f"seed-{s}" / "metrics.json").read_text())["val"]["map"] for s in (1, 2)]
    assert summary_json["metrics"]["val"]["map"]["values"] == metrics
    assert summary_json["metrics"]["val"]["map"]["sd"] == pytest.approx(statistics.stdev(metrics), abs=1e-15)

    # --resume: a finished seed is kept (not fitted again), a missing one is trained.
    kept = (out / "seed-1" / "model.safetensors").stat().st_mtime_ns
    import shutil

    shutil.rmtree(out / "seed-2")
    code, _, err = run("train", "--data", corpus, "--output", out, "--seeds", "1,2", "--resume", "model.kind=tfidf")
    assert code in (0, None), err
    assert (out / "seed-1" / "model.safetensors").stat().st_mtime_ns == kept
    assert (out / "seed-2" / "metrics.json").is_file()
    assert json.loads((out / "command.json").read_text())["resumed"] is True


def test_seeds_refusals_are_one_line(corpus, tmp_path, run):
    out = tmp_path / "runs"
    for args, message in ((["--seeds", "1,2", "train.seed=3"], "train.seed"),
                          (["--seeds", "1,x"], "--seeds"),
                          (["--seeds", "1,2", "--resume", str(tmp_path / "checkpoint")], "--resume")):
        code, _, err = run("train", "--data", corpus, "--output", out, *args, "model.kind=tfidf")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before anything was trained


@pytest.mark.slow
def test_seeds_of_a_coder_differ_and_each_command_reproduces_its_seed(corpus, tmp_path, run):
    values = {"model.encoder": str(minilm_path()), "model.encoder_config": json.dumps(tiny_bert()),
              "model.max_length": 128, "model.chunk_size": 64, "model.attention_dim": 32,
              "data.batch_size": 4, "data.micro_batch_size": 4, "data.eval_batch_size": 16,
              "optim.learning_rate": "3e-3", "optim.head_learning_rate": "3e-2", "optim.warmup_steps": 0,
              "train.epochs": 1, "train.mixed_precision": "no"}
    out = tmp_path / "runs"
    code, _, err = run("train", "--data", corpus, "--output", out, "--seeds", "1,2",
                       *(f"{k}={v}" for k, v in values.items()))
    assert code in (0, None), err
    stats = json.loads((out / "seeds.json").read_text())["metrics"]["val"]["map"]
    assert stats["sd"] > 0 and stats["n"] == 2  # the seed changes the run
    # The single-seed command recorded in seed-2 trains the same model again.
    argv = shlex.split(json.loads((out / "seed-2" / "command.json").read_text())["command"])
    again = tmp_path / "again"
    argv[argv.index("--output") + 1] = str(again)
    code, _, err = run(*argv[1:])
    assert code in (0, None), err
    assert (json.loads((again / "metrics.json").read_text())["val"]
            == json.loads((out / "seed-2" / "metrics.json").read_text())["val"])
