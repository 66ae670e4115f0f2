"""Bootstrap intervals over test notes: each resample's metrics equal compute_metrics on the
resampled matrix (the protocol's filters applied to the resample), and the intervals are the
percentiles of a hand-written resampling loop with the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from clem_icd.errors import ClemError
from clem_icd.evaluation.bootstrap import (
    INTERVAL_KEYS,
    bootstrap_intervals,
    bootstrap_samples,
    resample_weights,
)
from clem_icd.evaluation.metrics import compute_metrics


def loop(scores, targets, threshold, resamples, seed):
    """The definition: draw the scored notes with replacement, score the resample as a split."""
    keep = np.asarray(targets).any(axis=1)  # the notes the protocol scores
    scores, targets = np.asarray(scores)[keep], np.asarray(targets)[keep]
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(scores), size=len(scores))
        rows.append(compute_metrics(scores[drawn], targets[drawn], threshold))
    return rows


def case(seed, notes, codes, rate, *, ties=False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    targets = rng.random((notes, codes)) < rate
    targets[: notes // 10] = False  # notes without a positive are never scored
    targets[:, -1] = False  # nor is a code without one
    scores = rng.random((notes, codes))
    scores[targets] += rng.random(targets.sum()) * 0.5  # a model that knows something
    scores = np.clip(scores, 0, 1)
    if ties:
        scores = np.round(scores, 1)
    return scores.astype(dtype), targets


CASES = [
    case(0, 40, 12, 0.08),
    case(1, 60, 25, 0.05, ties=True),  # many ties: ranks, AUC halves
    case(2, 30, 6, 0.3, dtype=np.float32),
    case(3, 80, 40, 0.03, ties=True, dtype=np.float32),  # rare codes: often not in a resample
]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_each_resample_is_scored_exactly_as_compute_metrics_scores_it(index):
    scores, targets = CASES[index]
    thresholds = [0.35, 0.5]
    got = bootstrap_samples(scores, targets, thresholds, resamples=30, seed=index)
    for threshold, values in zip(thresholds, got):
        expected = loop(scores, targets, threshold, 30, index)
        for key in INTERVAL_KEYS:
            np.testing.assert_allclose(values[key], [row[key] for row in expected], rtol=0, atol=1e-12,
                                       err_msg=f"{key} at {threshold}")
    # The per-resample code filter was exercised: some resample scores fewer codes than the split.
    if index == 3:
        full = compute_metrics(scores, targets, 0.5)["codes"]
        assert min(row["codes"] for row in loop(scores, targets, 0.5, 30, index)) < full


def test_intervals_are_the_percentiles_of_the_resampling_loop():
    scores, targets = CASES[1]
    [intervals] = bootstrap_intervals(scores, targets, 0.4, resamples=200, seed=7)
    rows = loop(scores, targets, 0.4, 200, 7)
    for key in ("f1_micro", "f1_macro", "map", "precision@8", "auc_macro"):
        values = np.array([row[key] for row in rows])
        np.testing.assert_allclose(intervals[key], np.percentile(values, [2.5, 97.5]), atol=1e-12)
    point = compute_metrics(scores, targets, 0.4)["f1_micro"]
    lo, hi = intervals["f1_micro"]
    assert lo < hi and lo <= point <= hi


def test_a_narrower_confidence_gives_a_nested_interval():
    scores, targets = CASES[0]
    [wide] = bootstrap_intervals(scores, targets, 0.5, resamples=100, seed=1)
    [narrow] = bootstrap_intervals(scores, targets, 0.5, resamples=100, seed=1, confidence=0.5)
    rows = loop(scores, targets, 0.5, 100, 1)
    np.testing.assert_allclose(narrow["map"], np.percentile([row["map"] for row in rows], [25, 75]), atol=1e-12)
    assert wide["map"][0] <= narrow["map"][0] <= narrow["map"][1] <= wide["map"][1]


def test_resample_weights_count_sequential_draws_of_one_generator():
    rng = np.random.default_rng(11)
    expected = [np.bincount(rng.integers(0, 17, size=17), minlength=17) for _ in range(5)]
    np.testing.assert_array_equal(resample_weights(17, 5, seed=11), expected)


def test_bad_requests_are_refused():
    scores, targets = CASES[0]
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_samples(scores, targets, 0.5, resamples=0)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_samples(scores, targets, float("nan"), resamples=3)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_intervals(scores, targets, 0.5, resamples=3, confidence=1.0)
    with pytest.raises(ClemError, match="no document has a positive"):
        bootstrap_samples(scores, np.zeros_like(targets), 0.5, resamples=3)
