"""Code lists → label indices and multi-hot target matrices, in a given label order. The one
definition that training, evaluation and the baseline share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def label_indices(code_lists: Sequence[Sequence[str]], codes: Sequence[str]) -> list[list[int]]:
    """For each document, the columns of its codes in `codes`; codes outside the list are left
    out (the caller decides whether that is an error: evaluation gives unknown codes their own
    columns first, see evaluation.evaluate.label_space)."""
    column = {code: j for j, code in enumerate(codes)}
    return [[column[c] for c in doc if c in column] for doc in code_lists]


def multi_hot(indices: Sequence[Sequence[int]], n_labels: int) -> np.ndarray:
    """(documents, n_labels) int8 matrix with 1 where a document has the label."""
    matrix = np.zeros((len(indices), n_labels), dtype=np.int8)
    for row, columns in enumerate(indices):
        matrix[row, list(columns)] = 1
    return matrix


def targets_matrix(code_lists: Sequence[Sequence[str]], codes: Sequence[str]) -> np.ndarray:
    """(documents, codes) int8 targets of `code_lists` in the order of `codes`."""
    return multi_hot(label_indices(code_lists, codes), len(codes))
