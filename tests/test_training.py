"""Training: configs, length-grouped batches, a short run that lowers the loss, determinism, the
TF-IDF recipe, and evaluate on the result."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_fixtures import minilm_path, tiny_bert

from clem_icd.data.synthetic import make_synthetic_dataset
from clem_icd.training.data import LengthGroupedBatches


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic_dataset(path, n_documents=80, n_codes=10, seed=1)
    return path


def tiny_overrides(**extra) -> list[str]:
    values = {"model.encoder": str(minilm_path()), "model.encoder_config": json.dumps(tiny_bert()),
              "model.max_length": 128, "model.chunk_size": 64, "model.attention_dim": 32,
              "data.batch_size": 4, "data.micro_batch_size": 4, "data.eval_batch_size": 16,
              "optim.learning_rate": "3e-3", "optim.head_learning_rate": "3e-2", "optim.warmup_steps": 0,
              "train.epochs": 4, "train.early_stopping_patience": 10, "train.mixed_precision": "no", **extra}
    return [f"{k}={v}" for k, v in values.items()]


def test_length_grouped_batches_cover_everything_once_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 2000, size=1000).tolist()
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=3)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == LengthGroupedBatches(lengths, batch_size=8, seed=3).batches()
    sampler.set_epoch(1)
    assert sampler.batches() != batches  # a new order each epoch

    def padding(bs):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)

    random_batches = LengthGroupedBatches(lengths, batch_size=8, seed=3, group=False).batches()
    assert padding(batches) < 0.1 * padding(random_batches)


def test_short_training_run_lowers_loss_and_saves_model(corpus, tmp_path, run):
    out = tmp_path / "model"
    code, _, err = run("train", "--data", corpus, "--output", out, *tiny_overrides())
    assert code in (0, None), err
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 4
    assert log[-1]["train_loss"] < 0.9 * log[0]["train_loss"]
    assert all(b["train_loss"] < a["train_loss"] for a, b in zip(log, log[1:]))
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert 0 <= config["threshold"] <= 1 and config["threshold"] == metrics["threshold"]
    assert metrics["val"]["map"] > 0
    assert {"model.safetensors", "README.md", "tokenizer.json", "train_config.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "best").exists()


def test_same_seed_same_model(corpus, tmp_path, run):
    from clem_icd.model import ICDCoder

    probabilities = []
    for name in ("a", "b"):
        code, _, err = run("train", "--data", corpus, "--output", tmp_path / name, *tiny_overrides(**{"train.epochs": 1}))
        assert code in (0, None), err
        probabilities.append(ICDCoder.from_pretrained(tmp_path / name).predict_proba(["Admitted with pneumonia."]))
    np.testing.assert_array_equal(probabilities[0], probabilities[1])


def test_tfidf_recipe_and_evaluate(corpus, tmp_path, run):
    model = tmp_path / "tfidf"
    code, _, err = run("train", "--data", corpus, "--output", model, "model.kind=tfidf")
    assert code in (0, None), err
    out = tmp_path / "eval"
    code, stdout, err = run("evaluate", "--model", model, "--data", corpus, "--split", "test", "--out", out)
    assert code in (0, None), err
    result = json.loads((out / "metrics.json").read_text())
    assert result["split"] == "test"
    names = list(result["results"])
    assert len(names) == 4 and names[0].startswith("model @") and names[2].startswith("tfidf @")
    tuned = result["results"][names[0]]
    assert 0 < tuned["f1_micro"] <= 1 and tuned["documents"] > 0
    assert "f1_micro" in stdout and "tfidf" in stdout
    ranking = (out / "model_ranking.tsv").read_text().splitlines()
    assert all(len(line.split("\t")) == 2 for line in ranking)
    assert (out / "model_per_code.csv").read_text().startswith("code,description,support")


def test_train_refuses_dataset_without_val(tmp_path, run):
    import polars as pl

    data = tmp_path / "data"
    make_synthetic_dataset(data, n_documents=20, n_codes=8, seed=0)
    docs = pl.read_parquet(data / "documents.parquet").with_columns(split=pl.lit("train"))
    docs.write_parquet(data / "documents.parquet")
    code, _, err = run("train", "--data", data, "--output", tmp_path / "m", "model.kind=tfidf")
    assert code == 2 and "val split" in err and len(err.strip().splitlines()) == 1


def test_gradient_checkpointing_on_modernbert_trains_the_same_model(corpus, tmp_path, run):
    """train.gradient_checkpointing on the fast ModernBERT path recomputes activations and
    changes nothing else: one epoch, same seed, the same saved weights (within float noise)."""
    from model_fixtures import tiny_modernbert
    from safetensors.torch import load_file

    weights = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        code, _, err = run("train", "--data", corpus, "--output", out, *tiny_overrides(**{
            "model.encoder_config": json.dumps(tiny_modernbert()), "model.chunk_size": 128,
            "train.epochs": 1, "train.gradient_checkpointing": flag}))
        assert code == 0, err
        weights[flag] = load_file(str(out / "model.safetensors"))
    assert weights["true"].keys() == weights["false"].keys()
    for name, tensor in weights["false"].items():
        np.testing.assert_allclose(weights["true"][name].numpy(), tensor.numpy(), rtol=0, atol=1e-5, err_msg=name)
