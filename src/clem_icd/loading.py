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


MATCHER_FOLDER = "matcher"  # inside a model folder: its description matcher (clem-icd match)


def load_model(path: Path | str, device: str | None = None, unseen_codes: bool = False):
    """The model of a folder. `unseen_codes`: with the folder's description matcher, so that
    codes without a training example are ranked too (clem_icd.matching.open_set)."""
    path = Path(path)
    model = _load(path, device)
    if not unseen_codes:
        return model
    folder = path / MATCHER_FOLDER
    if not (folder / "config.json").is_file():
        raise ClemError(f"{folder}: no description matcher in this model folder "
                        f"(build one with `clem-icd match --model {path} --data PREPARED_DATA`)")
    from clem_icd.matching.matcher import DescriptionMatcher
    from clem_icd.matching.open_set import OpenSetCoder

    return OpenSetCoder(model, DescriptionMatcher.from_pretrained(folder, device=device))


def _load(path: Path, device: str | None):
    kind = model_type(path)
    if kind == "clem_icd":
        from clem_icd.model import ICDCoder

        return ICDCoder.from_pretrained(path, device=device)
    if kind == "tfidf":
        from clem_icd.baselines.tfidf import TfidfCoder

        return TfidfCoder.from_pretrained(path)
    if kind == "fusion":  # an ensemble (clem-icd fuse) whose members are model folders of any kind
        from clem_icd.fusion import FusedModel

        return FusedModel.from_pretrained(path, load_member=lambda member: load_model(member, device=device))
    raise ClemError(f"{path / 'config.json'}: unknown model_type {kind!r} (expected clem_icd, tfidf or fusion)")
