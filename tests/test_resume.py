"""Checkpoints and resume: a training killed with SIGKILL in the middle of an epoch and resumed
ends with the metrics.json and weights of an uninterrupted run, byte for byte; a damaged newest
checkpoint is reported in one line and the previous one used; the same seed gives the same bytes
twice (determinism)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from model_fixtures import minilm_path, tiny_bert

from clem_icd.data.synthetic import make_synthetic_dataset
from clem_icd.training.checkpoints import (
    checkpoint_name,
    complete_checkpoints,
    problem,
    read_progress,
)

# 56 train notes in micro-batches of 2, global batches of 4: 14 optimizer steps an epoch, a
# checkpoint every 3 (so most fall inside an epoch), all of them kept until the end.


def overrides() -> list[str]:
    values = {"model.encoder": str(minilm_path()), "model.encoder_config": json.dumps(tiny_bert()),
              "model.max_length": 128, "model.chunk_size": 64, "model.attention_dim": 32,
              "data.batch_size": 4, "data.micro_batch_size": 2, "data.eval_batch_size": 16,
              "optim.learning_rate": "3e-3", "optim.head_learning_rate": "3e-2", "optim.warmup_steps": 4,
              "train.epochs": 3, "train.early_stopping_patience": 10, "train.mixed_precision": "no",
              "train.checkpoint_every": 3, "train.keep_checkpoints": 100}
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "data"
    make_synthetic_dataset(path, n_documents=80, n_codes=10, seed=1)
    return path


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted run (in a fresh interpreter, as the resumed ones)."""
    out = tmp_path_factory.mktemp("reference") / "model"
    result = train_cli(corpus, out)
    assert result.returncode == 0, result.stderr
    return out


def train_cli(corpus, out, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clem_icd.cli", "--quiet", "train", "--data", str(corpus),
                           "--output", str(out), *overrides(), *extra], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CLEM_ICD_DEBUG": "1"})  # a failure shows its traceback (synthetic notes)


def killed_mid_epoch(corpus, out, after_step: int, *extra) -> None:
    """Start a training and SIGKILL it as soon as the checkpoint of `after_step` is complete."""
    process = subprocess.Popen([sys.executable, "-m", "clem_icd.cli", "--quiet", "train", "--data", str(corpus),
                                "--output", str(out), *overrides(), *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wanted = out / "checkpoints" / checkpoint_name(after_step)
    deadline = time.monotonic() + 300
    while not wanted.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()


def assert_same_training(out, reference) -> None:
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()

    def log(folder):  # the per-epoch log, less the wall-clock times
        return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert log(out) == log(reference)
    assert not (out / "checkpoints").exists() and not list(out.glob("best-epoch-*"))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_metrics_and_weights(corpus, reference, tmp_path):
    out = tmp_path / "model"
    killed_mid_epoch(corpus, out, after_step=21)  # epoch 2, step 7 of 14
    newest = complete_checkpoints(out)[-1]
    assert read_progress(newest)["epoch_steps"] > 0  # killed inside an epoch
    assert (out / "metrics.jsonl").read_text().count("\n") >= 1
    result = train_cli(corpus, out, "--resume")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert_same_training(out, reference)


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_used(corpus, reference, tmp_path):
    out = tmp_path / "model"
    killed_mid_epoch(corpus, out, after_step=9)
    newest = complete_checkpoints(out)[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a disk that filled up, a torn copy
    # and a checkpoint whose writer was killed before its manifest: not finished
    unfinished = out / "checkpoints" / checkpoint_name(99)
    shutil.copytree(complete_checkpoints(out)[0], unfinished)
    (unfinished / "manifest.json").unlink()

    # A fresh start over the checkpoints would throw them away: refused, in one line.
    refused = train_cli(corpus, out)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "--resume" in refused.stderr
    # Another recipe cannot continue this one.
    other = train_cli(corpus, out, "--resume", "optim.learning_rate=1e-3")
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert other.stderr.startswith("error: --resume: the recipe differs") and "in optim.learning_rate;" in other.stderr

    result = train_cli(corpus, out, "--resume")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert checkpoint_name(99) in warnings[0] and "no manifest" in warnings[0]
    assert newest.name in warnings[1] and "model.safetensors" in warnings[1]
    assert_same_training(out, reference)


@pytest.mark.slow
def test_resume_from_a_named_checkpoint_and_the_errors_of_a_bad_one(corpus, reference, tmp_path):
    out = tmp_path / "model"
    killed_mid_epoch(corpus, out, after_step=18)
    first = complete_checkpoints(out)[0]  # step 3, inside epoch 1: newer ones are discarded
    assert read_progress(first)["step"] == 3
    missing = train_cli(corpus, out, "--resume", tmp_path / "nowhere")
    assert missing.returncode == 2 and "no such checkpoint" in missing.stderr
    result = train_cli(corpus, out, "--resume", first)
    assert result.returncode == 0, result.stderr
    assert_same_training(out, reference)


@pytest.mark.slow
def test_same_seed_gives_byte_identical_metrics_and_weights(corpus, reference, tmp_path):
    out = tmp_path / "again"
    result = train_cli(corpus, out)
    assert result.returncode == 0, result.stderr
    assert_same_training(out, reference)


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory):
    """Another dataset: 2 more codes, another seed, 10 more notes."""
    path = tmp_path_factory.mktemp("resume_other") / "data"
    make_synthetic_dataset(path, n_documents=90, n_codes=12, seed=2)
    return path


@pytest.mark.slow
def test_resume_may_raise_train_epochs_but_not_change_the_dataset(corpus, other_corpus, tmp_path):
    out = tmp_path / "model"
    killed_mid_epoch(corpus, out, 21, "train.epochs=2")  # epoch 2 of 2, step 7 of 14

    def refused(result) -> str:
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        return result.stderr

    # Below the epoch the checkpoint is in: refused.
    assert "train.epochs 1 is below the 2 epoch(s)" in refused(train_cli(corpus, out, "--resume", "train.epochs=1"))
    # Another prepared dataset: refused, naming what changed.
    message = refused(train_cli(other_corpus, out, "--resume", "train.epochs=2"))
    assert message.startswith(f"error: --resume: {other_corpus} is not the dataset this run started on")
    for change in ("documents.parquet (sha256 ", "codes: 2 added (", "n_codes 10 → 12", "seed 1 → 2",
                   "documents per split: train 56 → "):
        assert change in message, message

    result = train_cli(corpus, out, "--resume", "train.epochs=3")
    assert result.returncode == 0, result.stderr
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2, 3]
    assert json.loads((out / "train_config.json").read_text())["train"]["epochs"] == 3
    assert (out / "metrics.json").is_file() and not (out / "checkpoints").exists()
    # From the resumed step on, the learning rate is the linear schedule of a 3-epoch run (the
    # 2-epoch one would be 0 at the end of epoch 2): warm-up min(4, total // 10), then decay.
    per_epoch = log[0]["step"]
    total = 3 * per_epoch
    warmup = min(4, total // 10)
    assert log[1]["learning_rate"] == pytest.approx(3e-3 * (total - log[1]["step"]) / (total - warmup), rel=1e-9)
    assert log[1]["learning_rate"] > 0


@pytest.mark.slow
def test_a_finished_run_cannot_raise_its_epochs(corpus, reference):
    result = train_cli(corpus, reference, "--resume", "train.epochs=4")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "has finished its training" in result.stderr and f"--init-from {reference}" in result.stderr


def test_a_checkpoint_is_checked_against_its_manifest(tmp_path):
    folder = tmp_path / checkpoint_name(5)
    folder.mkdir()
    assert problem(folder) == "no manifest (it was not finished)"
    (folder / "progress.json").write_text("{}")
    (folder / "optimizer.bin").write_bytes(b"abc")
    from clem_icd.data.io import sha256_file

    files = {name: {"bytes": 3 if name == "optimizer.bin" else 2, "sha256": sha256_file(folder / name)}
             for name in ("progress.json", "optimizer.bin")}
    (folder / "manifest.json").write_text(json.dumps({"step": 5, "files": files}))
    assert problem(folder) is None
    (folder / "optimizer.bin").write_bytes(b"abd")  # same size, other bytes
    assert problem(folder) == "optimizer.bin does not match its sha256"
    (folder / "optimizer.bin").write_bytes(b"ab")
    assert problem(folder) == "optimizer.bin has 2 bytes, the manifest says 3"
    (folder / "optimizer.bin").unlink()
    assert problem(folder) == "optimizer.bin is missing"
    (folder / "manifest.json").write_text("{not json")
    assert problem(folder) == "manifest.json is unreadable"
