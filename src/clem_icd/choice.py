"""Which codes a note gets from its scores: the one rule every model kind uses (the neural
coder's NotePredictor and the TF-IDF baseline). Imports only numpy, so that any layer can use it."""

from __future__ import annotations

import numpy as np


def choose_codes(probabilities: np.ndarray, threshold: float, top_k: int | None) -> list[int]:
    """Columns scored above the threshold, best first (ties by column order), at most top_k."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [int(j) for j in order if probabilities[j] > threshold]
