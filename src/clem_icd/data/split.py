"""Train / val / test splits for data that comes without one.

Multi-label data needs iterative stratification (Sechidis et al. 2011, as in the
`iterative-stratification` package): a plain random split leaves many rare codes out of train
or out of test altogether. The split is made in two steps, as usual for this algorithm: train
against the rest, then the rest into val and test.

Documents without codes get a pseudo-label of their own, so they are spread over the splits in
proportion like any label instead of filling whatever room is left at the end.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from clem_icd.errors import ClemError

SPLIT_METHOD = "iterative stratification (iterstrat MultilabelStratifiedShuffleSplit)"


def label_matrix(label_lists: list[list[str]]) -> sp.csr_matrix:
    """Documents x labels indicator matrix, plus a last column for "no labels"."""
    index: dict[str, int] = {}
    rows, cols = [], []
    for row, labels in enumerate(label_lists):
        for label in dict.fromkeys(labels):
            rows.append(row)
            cols.append(index.setdefault(label, len(index)))
    empty = [row for row, labels in enumerate(label_lists) if not labels]
    rows += empty
    cols += [len(index)] * len(empty)
    shape = (len(label_lists), len(index) + 1)
    return sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=shape)


def _holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows that go to the `fraction` side of a stratified two-way split."""
    n = labels.shape[0]
    held = round(fraction * n)
    if held <= 0 or held >= n:  # nothing to stratify; iterstrat rejects an empty side
        return np.full(n, held > 0, dtype=bool)
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=held, random_state=seed)
    _, held_out = next(splitter.split(np.zeros(n), labels))
    mask = np.zeros(n, dtype=bool)
    mask[held_out] = True
    return mask


def stratified_split(label_lists: list[list[str]], seed: int,
                     fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[str]:
    """A split name (train / val / test) for every document, stratified on its labels.

    Deterministic for a given seed and input order."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise ClemError(f"split fractions must be three non-negative numbers summing to 1 "
                        f"with a positive train share, got {tuple(fractions)}")
    if not label_lists:
        return []
    # iterstrat only takes a dense array (it calls check_array without sparse support), so the
    # matrix costs one byte per document x distinct code, and the algorithm makes about three
    # copies of it: 10,000 documents x 5,000 codes is ~50 MB each, fine; MIMIC-IV scale
    # (122k x 8k, ~1 GB) would need a different splitter. A zero column is padded on because
    # scikit-learn only accepts multi-label input with at least two columns.
    matrix = label_matrix(label_lists)
    dense = np.zeros((matrix.shape[0], max(matrix.shape[1], 2)), dtype=bool)
    dense[:, : matrix.shape[1]] = matrix.toarray()

    train, val, test = fractions
    rest = _holdout(dense, val + test, seed)
    splits = np.full(len(label_lists), "train", dtype=object)
    rest_rows = np.flatnonzero(rest)
    test_in_rest = _holdout(dense[rest_rows], test / (val + test) if val + test else 0.0, seed)
    splits[rest_rows] = np.where(test_in_rest, "test", "val")
    return splits.tolist()
