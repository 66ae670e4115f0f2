"""Two processes through Accelerate (gloo, on CPU) train the model that one process trains with
the same global batch.

One process: micro-batches of 2 notes, 2 accumulated per optimizer step (global batch 4). Two
processes: micro-batches of 2 notes each, no accumulation, gradients averaged by DDP. Both see
the same notes per step (the length-grouped batches, dealt to the processes in turn), so the
only difference is the order of a floating-point sum (an all-reduce instead of an accumulation):
the tolerance is 1e-6 on every val metric and 1e-5 on every weight. Dropout is off, since each
process draws its own masks. The logged losses (per epoch and per step) are means over both
processes' notes, so they agree too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from model_fixtures import minilm_path, tiny_bert

from clem_icd.data.synthetic import make_synthetic_dataset


def overrides() -> list[str]:
    encoder = {**tiny_bert(), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    values = {"model.encoder": str(minilm_path()), "model.encoder_config": json.dumps(encoder),
              "model.max_length": 128, "model.chunk_size": 64, "model.attention_dim": 32,
              "data.batch_size": 4, "data.micro_batch_size": 2, "data.eval_batch_size": 16,
              "optim.learning_rate": "3e-3", "optim.head_learning_rate": "3e-2", "optim.warmup_steps": 0,
              "train.epochs": 2, "train.early_stopping_patience": 10, "train.mixed_precision": "no",
              "train.checkpoint_every": 0, "train.log_every": 5}
    return [f"{k}={v}" for k, v in values.items()]


def train(launcher: list[str], corpus, out, env: dict) -> None:
    result = subprocess.run([*launcher, "-m", "clem_icd.cli", "--quiet", "train", "--data", str(corpus),
                             "--output", str(out), *overrides()],
                            capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert accelerate, "the accelerate command is not installed beside this Python"
    corpus = tmp_path / "data"
    make_synthetic_dataset(corpus, n_documents=80, n_codes=10, seed=1)  # 56 train notes: 14 steps of 4
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    train([sys.executable], corpus, tmp_path / "one", env)
    # `accelerate launch --cpu` starts a single process unless MPI is set up; its multi-process
    # launcher with ACCELERATE_USE_CPU runs torchrun, and the trainer joins the processes with gloo.
    train([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"],
          corpus, tmp_path / "two", {**env, "ACCELERATE_USE_CPU": "true"})

    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert one["best_epoch"] == two["best_epoch"]
    for section in ("val", "val@0.5"):
        for metric, value in one[section].items():
            assert two[section][metric] == pytest.approx(value, abs=1e-6), (section, metric)

    logs = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("one", "two")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [14, 28]
    for a, b in zip(*logs):
        assert b["val@0.5"] == pytest.approx(a["val@0.5"], abs=1e-6)
    # The epoch's loss is the mean over all notes of its steps, over both processes alike.
    for a, b in zip(*logs):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
    steps = [[json.loads(line) for line in (tmp_path / name / "steps.jsonl").read_text().splitlines()]
             for name in ("one", "two")]
    assert [r["processes"] for r in steps[0]] == [1] * len(steps[0])
    assert [r["processes"] for r in steps[1]] == [2] * len(steps[1])  # there were two
    for a, b in zip(*steps):
        assert (b["step"], b["notes"], b["tokens"]) == (a["step"], a["notes"], a["tokens"])
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)

    from safetensors.numpy import load_file

    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    assert max(float(np.abs(weights[0][k] - weights[1][k]).max()) for k in weights[0]) <= 1e-5
