"""Which codes a note gets from its scores: the one rule every model kind uses (the neural
coder's NotePredictor and the TF-IDF baseline). Imports only numpy, so that any layer can use it."""

from __future__ import annotations

import numpy as np


def choose_codes(probabilities: np.ndarray, threshold: float, top_k: int | None) -> list[int]:
    """Columns scored above the threshold, best first (ties by column order), at most top_k.

    score > threshold compares exact values, as the metrics do (clem_icd.evaluation.metrics):
    a float32 score against the float64 threshold. NumPy 2 would round a Python float to float32
    against a float32 array, so float32(0.31) would not count as above 0.31 here while
    evaluation counts it, and `predict` and `evaluate` would choose different codes."""
    scores = np.asarray(probabilities)
    above = scores.astype(np.float64, copy=False) > np.float64(threshold)
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [int(j) for j in order if above[j]]


# What a model's scores are, and so what a code record says (`code_entry`): the neural coder,
# the TF-IDF baseline and mean fusion of probabilities give probabilities (calibrated on what
# the model learnt from); reciprocal rank fusion gives a rank score in [0, 1] (1 = best in every
# member) that is no probability, and is never called one.
PROBABILITY, RANK_SCORE = "probability", "rank score"
SCORE_KINDS = (PROBABILITY, RANK_SCORE)


def code_entry(code: str, system: str, description: str, score: float, score_kind: str) -> dict:
    """A chosen code as every model kind reports it: {code, system, description, score} and,
    only when the score is a probability, `probability` (the same value). `score` is what the
    threshold and the ranking use, whatever the model; clients of records written before it
    existed read `probability`, which stays wherever it is true."""
    if score_kind not in SCORE_KINDS:
        raise ValueError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}")
    entry = {"code": code, "system": system, "description": description, "score": float(score)}
    if score_kind == PROBABILITY:
        entry["probability"] = float(score)
    return entry
