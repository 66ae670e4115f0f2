"""Stratified train/val/test split for data without one (clem_icd.data.split)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from clem_icd.data.split import label_matrix, stratified_split
from clem_icd.errors import ClemError

FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}


def multilabel_set(n: int = 1000, labels: int = 60, seed: int = 0) -> list[list[str]]:
    """Codes with a long-tailed frequency (like ICD codes); about 10% of documents have none."""
    rng = np.random.default_rng(seed)
    frequency = 0.3 / np.arange(1, labels + 1) ** 0.8
    return [[f"C{j:02d}" for j in range(labels) if rng.random() < frequency[j]] for _ in range(n)]


def per_label_counts(label_lists, splits) -> dict[str, np.ndarray]:
    counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))
    for labels, split in zip(label_lists, splits):
        for label in labels:
            counts[label][SPLIT_INDEX[split]] += 1
    return counts


def mean_abs_deviation(label_lists, splits, min_docs: int = 5) -> float:
    """Mean over labels (with >= min_docs documents) of |fraction in split - target fraction|."""
    deviations = [np.abs(c / c.sum() - FRACTIONS).mean()
                  for c in per_label_counts(label_lists, splits).values() if c.sum() >= min_docs]
    return float(np.mean(deviations))


def random_split(n: int, seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(n)
    splits = np.empty(n, dtype=object)
    splits[order[: int(0.8 * n)]] = "train"
    splits[order[int(0.8 * n): int(0.9 * n)]] = "val"
    splits[order[int(0.9 * n):]] = "test"
    return splits.tolist()


@pytest.fixture(scope="module")
def documents() -> list[list[str]]:
    return multilabel_set()


def test_same_seed_same_split_other_seed_other_split(documents):
    first = stratified_split(documents, seed=7)
    assert stratified_split(documents, seed=7) == first
    assert stratified_split(documents, seed=8) != first


def test_every_document_gets_a_split_in_proportion(documents):
    splits = stratified_split(documents, seed=42)
    assert len(splits) == len(documents)
    counts = Counter(splits)
    assert set(counts) == {"train", "val", "test"}
    for name, fraction in zip(("train", "val", "test"), FRACTIONS):
        assert counts[name] / len(documents) == pytest.approx(fraction, abs=0.03)


def test_documents_without_codes_are_spread_over_the_splits(documents):
    splits = stratified_split(documents, seed=42)
    empty = Counter(s for labels, s in zip(documents, splits) if not labels)
    total = sum(empty.values())
    assert total > 50  # the constructed set has some
    assert empty["train"] / total == pytest.approx(0.8, abs=0.05)
    assert empty["val"] > 0 and empty["test"] > 0


def test_labels_with_ten_documents_are_in_train(documents):
    splits = stratified_split(documents, seed=3)
    for label, counts in per_label_counts(documents, splits).items():
        if counts.sum() >= 10:
            assert counts[0] > 0, label


def test_label_distribution_is_closer_to_target_than_a_random_split(documents):
    iterative = np.mean([mean_abs_deviation(documents, stratified_split(documents, seed=s)) for s in range(3)])
    plain = np.mean([mean_abs_deviation(documents, random_split(len(documents), seed=s)) for s in range(3)])
    assert iterative < 0.5 * plain, (iterative, plain)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10])
def test_tiny_inputs_get_a_split_for_every_document(n):
    for label_lists in ([["A"]] * n, [[]] * n, [["A"], []] * n):
        splits = stratified_split(label_lists, seed=0)
        assert len(splits) == len(label_lists)
        assert set(splits) <= {"train", "val", "test"}


def test_only_documents_without_codes():
    counts = Counter(stratified_split([[] for _ in range(100)], seed=1))
    assert counts == {"train": 80, "val": 10, "test": 10}


def test_other_fractions_and_no_test_share(documents):
    counts = Counter(stratified_split(documents, seed=0, fractions=(0.9, 0.1, 0.0)))
    assert counts["test"] == 0
    assert counts["val"] / len(documents) == pytest.approx(0.1, abs=0.03)


@pytest.mark.parametrize("fractions", [(0.5, 0.1, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), (0.8, 0.2)])
def test_bad_fractions(fractions):
    with pytest.raises(ClemError, match="fractions"):
        stratified_split([["A"]] * 10, seed=0, fractions=fractions)


def test_label_matrix_marks_documents_without_labels():
    matrix = label_matrix([["A", "B", "A"], [], ["B"]]).toarray()
    assert matrix.tolist() == [[True, True, False], [False, False, True], [False, True, False]]
