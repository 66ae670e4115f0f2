"""Bootstrap confidence intervals over the notes of a split, for every metric of the protocol.

A resample draws as many notes as the split scores, with replacement, and the metrics are
computed on it exactly as `compute_metrics` computes them on a split (tested against a loop of
`compute_metrics` over the resampled matrices, resample by resample):

- The notes resampled are those the protocol scores on the whole split (notes with a positive
  code). A note without a positive is never scored, so drawing it would only make the size of
  each resample random.
- The protocol's code filter is applied per resample, on the resampled set: a code whose
  positive notes were all left out of a resample is not scored in it (it adds no false
  positives, drops out of the macro means and out of each note's ranking). This is what the
  protocol would report on a test set that happened to be that resample; keeping every code of
  the whole split instead would score codes without a positive and make the intervals narrower
  than the protocol's variation.
- The threshold is fixed (tuned on val, not on the notes resampled).
- The draws depend only on `seed`, the number of scored notes and `resamples`, so two models
  evaluated on the same split get the same resamples (paired) with the same seed.
- The interval is the percentile interval (numpy's default linear interpolation) of the
  resampled values: for 95%, their 2.5% and 97.5% quantiles.

Nothing is re-sorted per resample. A resample is a vector of integer weights (how often each
note was drawn), and every metric is a function of weighted counts over orders computed once:
per-code counts are matrix products of the weights with the indicator matrices; a positive's
rank in its note falls by the number of excluded codes above it (a cumulative sum over the
note's negatives above its lowest positive); AUCs are weighted Mann-Whitney sums read off
cumulative sums of the weights over the cells sorted once by score (ties count half, as in
compute_metrics). The work per resample is a few passes over the documents x codes cells.

Measured (benchmarks/bootstrap_speed.py, 2 shared CPU cores, one thread): 1,000 resamples of
1,000 notes x 500 codes in 6.5 s, where a loop of compute_metrics takes 24 s; 2,000 x 1,000 in
30 s. It grows with notes x codes x resamples: MIMIC-IV test (19,802 x ~6,000 scored codes)
is about 80 minutes for 1,000 resamples on such a machine and needs several GB of memory (the
three cell orders and one resample's cumulative sums); --bootstrap 200 takes a fifth of that.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The protocol's own input checks and scoring filter, shared so that a resample is filtered
# exactly as a split is.
from clem_icd.evaluation.metrics import (
    METRIC_KEYS,
    PRECISION_AT,
    RECALL_AT,
    _as_arrays,
    _filter,
    _predict,
    _ratio,
    positions,
    positive_ranks,
)

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
# The sizes of the scored part are counts, not estimates: no interval.
INTERVAL_KEYS = tuple(key for key in METRIC_KEYS if key not in ("documents", "codes"))
_CHUNK_CELLS = 1 << 22  # resamples x cells held at once (16 MB per int32 array)


def resample_weights(n: int, resamples: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(resamples x n) int32: how often each of n notes is drawn in each resample. Resample b
    draws `np.random.default_rng(seed).integers(0, n, size=n)`, the b-th such call in turn
    (one call of size (resamples, n) gives the same numbers)."""
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    flat = (draws + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.int32)


def bootstrap_samples(
    scores: np.ndarray,
    targets: np.ndarray,
    thresholds: float | Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[dict[str, np.ndarray]]:
    """Every metric of compute_metrics (INTERVAL_KEYS) on each of `resamples` resamples of the
    scored notes: one {metric: array of `resamples` values} per threshold. The ranking and AUC
    metrics do not depend on the threshold and are computed once for all thresholds."""
    thresholds = [float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64))]
    if not thresholds or not all(np.isfinite(thresholds)):
        raise ValueError(f"thresholds must be finite, got {thresholds}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    scores, targets = _filter(*_as_arrays(scores, targets))
    n = scores.shape[0]
    if n >= 1 << 24:
        raise ValueError(f"{n} notes: counts in float32 products would no longer be exact")
    weights = resample_weights(n, resamples, seed)
    positives = targets.astype(np.float32)
    present = weights.astype(np.float32) @ positives  # positives of each code in each resample
    excluded_codes = np.flatnonzero((present == 0).any(axis=0))
    plan = _Plan(scores, targets, thresholds, excluded_codes)
    out = [{key: np.empty(resamples) for key in INTERVAL_KEYS} for _ in thresholds]
    chunk = max(1, min(resamples, _CHUNK_CELLS // max(plan.cells, 1)))
    for start in range(0, resamples, chunk):
        part = slice(start, min(start + chunk, resamples))
        plan.fill(weights[part], present[part].astype(np.int64), out, part)
    return out


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """[lo, hi]: the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the finite values;
    None when none is finite (a metric undefined in every resample)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return [float(lo), float(hi)]


def bootstrap_intervals(
    scores: np.ndarray,
    targets: np.ndarray,
    thresholds: float | Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
) -> list[dict[str, list[float] | None]]:
    """Percentile intervals, one {metric: [lo, hi]} per threshold (see the module's notes)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    samples = bootstrap_samples(scores, targets, thresholds, resamples=resamples, seed=seed)
    return [{key: percentile_interval(values[key], confidence) for key in INTERVAL_KEYS} for values in samples]


class _Plan:
    """What a resample's metrics are computed from, prepared once for the scored matrix."""

    def __init__(self, scores: np.ndarray, targets: np.ndarray, thresholds: list[float],
                 excluded_codes: np.ndarray):
        self.n, self.m = scores.shape
        self.cells = scores.size
        self.excluded_codes = excluded_codes  # codes that some resample does not score
        # Per threshold: the per-code count matrices and what a note needs for exact match.
        self.classes = []
        for threshold in thresholds:
            predicted = _predict(scores, threshold)
            false_pos = predicted & ~targets
            self.classes.append({
                "hits": (predicted & targets).astype(np.float32),
                "predicted": predicted.astype(np.float32),
                "no_miss": ~(targets & ~predicted).any(axis=1),
                "false_pos": false_pos.sum(axis=1),
                "false_pos_excludable": false_pos[:, excluded_codes].astype(np.float32),
            })
        self._ranking(scores, targets)
        # Micro AUC: all cells pooled, by score; macro: each code's cells, by score.
        self.micro = _sorted_cells(scores, targets, by_code=False)
        self.macro = _sorted_cells(scores, targets, by_code=True)

    def _ranking(self, scores: np.ndarray, targets: np.ndarray) -> None:
        rows, cols = positions(targets)
        rank = positive_ranks(scores, rows, cols)
        order = np.lexsort((rank, rows))  # each note's positives, best first
        rows, cols, self.rank = rows[order], cols[order], rank[order]
        self.per_note = np.bincount(rows, minlength=self.n)
        self.note_starts = np.concatenate(([0], np.cumsum(self.per_note)[:-1]))
        self.nth = np.arange(len(rows)) - self.note_starts[rows] + 1  # i-th positive of its note
        self.within_r = self.per_note[rows]  # R-precision's cut-off: the note's positives
        # Only a note's negatives on codes that some resample excludes, ranked above its lowest
        # positive, can move a positive up: list them as (note, code) pairs.
        excl = self.excluded_codes
        lowest = cols[self.note_starts + self.per_note - 1]
        low = scores[np.arange(self.n), lowest][:, None]
        sub = scores[:, excl]
        above = (sub > low) | ((sub == low) & (excl[None, :] < lowest[:, None]))
        pair_note, pair_slot = np.nonzero(above & ~targets[:, excl])
        # Pairs and positives in one ranking order (note, score descending, column: the tie
        # order of compute_metrics), to count the pairs of its note above each positive.
        note = np.concatenate((pair_note, rows))
        column = np.concatenate((excl[pair_slot], cols))
        key = -np.concatenate((scores[pair_note, excl[pair_slot]], scores[rows, cols])).astype(np.float64)
        is_pair = np.arange(len(note)) < len(pair_note)
        together = np.lexsort((column, key, note))
        pairs_so_far = np.cumsum(is_pair[together])
        self.pairs_before = np.empty(len(rows), dtype=np.int64)  # pairs of earlier notes too
        positive = ~is_pair[together]
        self.pairs_before[together[positive] - len(pair_note)] = pairs_so_far[positive]
        self.pair_slot = pair_slot[together[~positive]]  # column in `excluded`, in that order
        self.note_pair_start = np.searchsorted(pair_note, np.arange(self.n))[rows]  # nonzero sorts by note

    def fill(self, weights: np.ndarray, present: np.ndarray, out: list[dict], part: slice) -> None:
        """The metrics of the resamples `weights` (resamples x notes) into out[...][key][part];
        `present`: their positives per code."""
        n = self.n
        scored = present > 0  # the codes each resample scores
        n_scored = scored.sum(axis=1)
        excluded = ~scored[:, self.excluded_codes]
        w = weights.astype(np.float32)  # counts below 2**24: float32 products are exact
        for values, classes in zip(out, self.classes):
            hits = (w @ classes["hits"]).astype(np.int64)
            predicted = (w @ classes["predicted"]).astype(np.int64) * scored
            false_pos, false_neg = predicted - hits, present - hits
            true_neg = (n - present - false_pos) * scored
            tp, fp, fn, tn = hits.sum(1), false_pos.sum(1), false_neg.sum(1), true_neg.sum(1)

            def macro(ratio):  # mean over the resample's scored codes
                return (ratio * scored).sum(axis=1) / n_scored

            values["f1_micro"][part] = _ratio(tp, tp + (fp + fn) / 2)
            values["f1_macro"][part] = macro(_ratio(hits, hits + (false_pos + false_neg) / 2))
            values["precision_micro"][part] = _ratio(tp, tp + fp)
            values["precision_macro"][part] = macro(_ratio(hits, predicted))
            values["recall_micro"][part] = _ratio(tp, tp + fn)
            values["recall_macro"][part] = macro(_ratio(hits, present))
            values["fpr_micro"][part] = _ratio(fp, fp + tn)
            values["fpr_macro"][part] = macro(_ratio(false_pos, false_pos + true_neg))
            # A note matches exactly when it misses none of its positives and predicts no
            # scored negative: its false positives on codes the resample excludes do not count.
            dropped = excluded.astype(np.float32) @ classes["false_pos_excludable"].T
            exact = classes["no_miss"][None, :] & (classes["false_pos"][None, :] == dropped)
            values["exact_match_ratio"][part] = (weights * exact).sum(axis=1) / n
        shared = self._ranking_metrics(weights, excluded) | self._auc_metrics(weights, scored, present)
        for values in out:
            for key, column in shared.items():
                values[key][part] = column

    def _ranking_metrics(self, weights: np.ndarray, excluded: np.ndarray) -> dict[str, np.ndarray]:
        rank = self.rank[None, :]
        if len(self.pair_slot):
            # A positive rises by the excluded codes above it in its note.
            passed = np.zeros((len(weights), len(self.pair_slot) + 1), dtype=np.int64)
            np.cumsum(excluded[:, self.pair_slot], axis=1, out=passed[:, 1:])
            rank = rank - (passed[:, self.pairs_before] - passed[:, self.note_pair_start])

        def per_note(values):  # sum over each note's positives (every note has one)
            return np.add.reduceat(values, self.note_starts, axis=1)

        def mean(per_note_values):  # over the resampled notes, each as often as it was drawn
            return (weights * per_note_values).sum(axis=1) / self.n

        out = {}
        for k in sorted(set(PRECISION_AT) | set(RECALL_AT)):
            hits = per_note((rank <= k).astype(np.float64))
            if k in PRECISION_AT:
                out[f"precision@{k}"] = mean(hits / k)
            if k in RECALL_AT:
                out[f"recall@{k}"] = mean(hits / self.per_note)
        out["map"] = mean(per_note(self.nth / rank) / self.per_note)
        out["precision@recall"] = mean(per_note((rank <= self.within_r).astype(np.float64)) / self.per_note)
        return out

    def _auc_metrics(self, weights: np.ndarray, scored: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
        n, micro, macro = self.n, self.micro, self.macro
        n_pos = present.sum(axis=1).astype(np.float64)
        # Micro: a negative cell counts when its note is drawn and its code scored.
        negative = np.take(weights, micro["note"], axis=1)
        if len(self.excluded_codes):
            negative *= np.take(scored, micro["code"], axis=1)
        pairs = n_pos * (n * scored.sum(axis=1) - n_pos)  # positive x negative cells
        with np.errstate(divide="ignore", invalid="ignore"):
            auc_micro = np.where(pairs > 0, _mann_whitney(negative, weights, micro)[:, 0] / pairs, np.nan)
        # Macro: per code, over the notes; codes without a positive or a negative are skipped
        # (an excluded code has no positive).
        negative = np.take(weights, macro["note"], axis=1)
        pairs = present.astype(np.float64) * (n - present)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_code = np.where(pairs > 0, _mann_whitney(negative, weights, macro) / pairs, np.nan)
        defined = ~np.isnan(per_code)
        counts = defined.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            auc_macro = np.where(counts > 0, np.where(defined, per_code, 0).sum(axis=1) / counts, np.nan)
        return {"auc_micro": auc_micro, "auc_macro": auc_macro}


def _sorted_cells(scores: np.ndarray, targets: np.ndarray, by_code: bool) -> dict[str, np.ndarray]:
    """The negative cells sorted by score (within each code when `by_code`), and for each
    positive cell how many of them lie before its tie group (equal score, and the same code
    when `by_code`) and before its end: the negatives below it count 1, tied ones 1/2. The
    positives are listed segment by segment (one segment, or one per code)."""
    n, m = scores.shape
    flat, positive = scores.ravel(), targets.ravel()
    if by_code:  # each code's notes by score (stable: ties in note order), code after code
        by_note = np.argsort(scores.T, axis=1, kind="stable")
        cells = (by_note * m + np.arange(m)[:, None]).ravel()
    else:
        cells = np.argsort(flat, kind="stable")
    value = flat[cells]
    segment = cells % m if by_code else np.zeros(len(cells), dtype=np.int64)
    new_group = np.ones(len(cells), dtype=bool)
    new_group[1:] = (value[1:] != value[:-1]) | (segment[1:] != segment[:-1])
    group_start = np.flatnonzero(new_group)
    group_end = np.append(group_start[1:], len(cells))  # one past its last cell
    group_of = np.cumsum(new_group) - 1
    is_positive = positive[cells]
    negatives_before = np.zeros(len(cells) + 1, dtype=np.int64)
    np.cumsum(~is_positive, out=negatives_before[1:])
    positive_at = np.flatnonzero(is_positive)  # in segment order already
    positive_segment = segment[positive_at]
    counts = np.bincount(positive_segment, minlength=m if by_code else 1)
    negative_cells = cells[~is_positive]
    out = {
        "note": negative_cells // m,
        "code": negative_cells % m,
        "positive_note": cells[positive_at] // m,
        "low": negatives_before[group_start[group_of[positive_at]]],
        "high": negatives_before[group_end[group_of[positive_at]]],
        "positive_starts": np.concatenate(([0], np.cumsum(counts)[:-1])),
        "codes": m,
    }
    if by_code:  # each code's cells start at code x notes in the sorted order
        out["segment_start"] = negatives_before[positive_segment * n]
    return out


def _mann_whitney(negative_weight: np.ndarray, weights: np.ndarray, cells: dict) -> np.ndarray:
    """Per resample and segment: the sum over positive cells (each as often as its note is
    drawn) of the weight of the negatives below it in its segment, ties counting half."""
    # A resample's weights over the cells add up to at most notes x codes (each note's weight
    # once per code): int32 sums are exact below 2**31, and twice as fast as int64.
    dtype = np.int32 if weights.shape[1] * cells["codes"] < 1 << 31 else np.int64
    cumulative = np.zeros((len(negative_weight), negative_weight.shape[1] + 1), dtype=dtype)
    np.cumsum(negative_weight, axis=1, dtype=dtype, out=cumulative[:, 1:])
    low, high = np.take(cumulative, cells["low"], axis=1), np.take(cumulative, cells["high"], axis=1)
    below = (low + high.astype(np.float64)) / 2.0
    if "segment_start" in cells:
        below -= np.take(cumulative, cells["segment_start"], axis=1)
    drawn = np.take(weights, cells["positive_note"], axis=1)
    return np.add.reduceat(drawn * below, cells["positive_starts"], axis=1)
