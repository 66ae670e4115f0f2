"""Load a model folder of any kind CLEM-ICD trains (the neural coder or the TF-IDF baseline).

Both expose `codes`, `threshold`, `predict_proba(texts)` (probabilities in `codes` order) and
`predict(texts, threshold=None, top_k=None)` (per text [{code, system, description, probability}],
best first) and `note_predictor(options)` (the streaming interface of clem_icd.inference.run).
This module sits above both model kinds: it is the one place that knows them all."""

from __future__ import annotations

import json
from pathlib import Path

from clem_icd.errors import ClemError


def model_type(path: Path) -> str:
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ClemError(f"{config}: not found (is {path} a trained model folder?)")
    try:
        return json.loads(config.read_text()).get("model_type", "")
    except json.JSONDecodeError:
        raise ClemError(f"{config}: not valid JSON") from None


def load_model(path: Path | str, device: str | None = None):
    path = Path(path)
    kind = model_type(path)
    if kind == "clem_icd":
        from clem_icd.model import ICDCoder

        return ICDCoder.from_pretrained(path, device=device)
    if kind == "tfidf":
        from clem_icd.baselines.tfidf import TfidfCoder

        return TfidfCoder.from_pretrained(path)
    raise ClemError(f"{path / 'config.json'}: unknown model_type {kind!r} (expected clem_icd or tfidf)")
