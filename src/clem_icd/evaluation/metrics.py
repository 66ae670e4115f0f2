"""The evaluation protocol of Edin et al. (SIGIR 2023), in vectorised numpy.

Reference: github.com/JoakimEdin/medical-coding-reproducibility, src/metrics.py,
src/trainer/trainer.py and src/utils/decision_boundary.py (read for semantics; no code copied).

What is scored by `compute_metrics` (always; it has no option to score everything), as their
MetricCollection with split code indices:
- only codes with at least one positive in this split's `targets`;
- only documents with at least one positive among those codes. Since every code with a positive
  is scored, that is simply "documents with any positive".
  (Edin drops such documents for the batch metrics but not for AUC; their MIMIC splits have no
  document without codes, so the two agree there. We drop them for every metric.)
`per_code_table` drops the same documents but lists every code (null metrics where unscored).
`tune_threshold` does NOT filter by default (see the last points below).

Conventions, each as in Edin's code unless said otherwise:
- prediction = score > threshold (strict): a score equal to the threshold is negative. Values
  are compared exactly (a float32 score as its exact value against the float64 threshold; Edin
  compares float32 with float32, which differs only for a score within float32 rounding of the
  threshold).
- 0/0 is 0 (Edin adds 1e-10 to every denominator; we divide exactly and map 0/0 to 0, which
  differs from theirs by < 1e-10). After filtering, macro recall and macro F1 never meet 0/0 (every
  scored code has a positive); macro precision does for codes never predicted (counted as 0, as
  sklearn's zero_division=0), and FPR for codes positive in every document (counted as 0).
- macro = unweighted mean over the scored codes.
- F1 = tp / (tp + (fp + fn) / 2).
- Ranking metrics (P@k, R@k, R-precision, mAP) rank each document's scored codes by score,
  best first. Edin uses torch.topk / torch.sort, whose order among tied scores is unspecified;
  we break ties by column order (lower column first, i.e. a stable sort), so results are
  deterministic. Without ties both agree exactly.
- P@k = hits in the top k / k (also when k exceeds the number of scored codes, where torch.topk
  would fail); R@k = hits in the top k / the document's positives;
  R-precision ("precision@recall") = hits in the top R / R with R the document's positives;
  AP (per document) = sum over its positives of the precision at their rank / positives.
- AUC: micro = ROC AUC of all scored cells pooled; macro = mean ROC AUC over codes, skipping
  codes without negatives (Edin skips codes whose ROC curve is NaN, which is exactly those; codes
  without positives are already filtered out). Tied scores count half (sklearn's trapezoidal
  ROC AUC, as Edin uses). NaN when no code / cell can be scored.
- Threshold tuning: Edin's f1_score_db_tuning evaluates micro F1 at torch.linspace(0, 1, 100)
  and takes the first argmax (torch.argmax returns the first maximum). We use the same 100
  values (np.linspace(0, 1, 100), in float64 where theirs are float32: they differ by < 3e-9)
  and np.argmax, which also returns the first, i.e. the lowest threshold among ties. Edin passes
  the *unfiltered* validation matrix (codes of the label space absent from validation, and
  documents without codes, add false positives), and so does `tune_threshold` by default
  (`filtered=False`; the threshold saved with a trained model, and the baselines', is tuned so).
  `tune_threshold(..., filtered=True)` tunes on the sub-matrix compute_metrics scores instead.
- Edin accumulates counts in float32 tensors; we count in integers, so large splits are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from clem_icd.errors import ClemError

THRESHOLD_GRID = np.linspace(0.0, 1.0, 100)
PRECISION_AT = (5, 8, 15)
RECALL_AT = (10, 15)
METRIC_KEYS = (
    "f1_micro", "f1_macro", "precision_micro", "precision_macro", "recall_micro", "recall_macro",
    "fpr_micro", "fpr_macro", "exact_match_ratio",
    *(f"precision@{k}" for k in PRECISION_AT), *(f"recall@{k}" for k in RECALL_AT),
    "map", "precision@recall", "auc_micro", "auc_macro", "documents", "codes",
)
_CHUNK_CELLS = 1 << 24  # bound on temporary matrices in the tie-breaking step
# Cells sorted at a time when counting over the pooled matrix: small blocks sort fastest, but
# each block costs a binary search per value, so many values (micro AUC) want larger blocks.
_BLOCK_CELLS_FEW, _BLOCK_CELLS_MANY = 1 << 21, 1 << 24
_TRANSPOSE_ROWS = 512  # rows copied at a time by _transposed


# ---------------------------------------------------------------- input and filtering


def _as_arrays(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """Validated (scores as float32/float64, targets as bool), both documents x codes."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must be 2-D and of one shape (documents x codes); "
            f"got {scores.shape} and {targets.shape}"
        )
    if scores.dtype != np.float32:
        scores = scores.astype(np.float64, copy=False)  # float32 stays: halves memory
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    if targets.dtype != bool:
        if not np.isin(targets, (0, 1)).all():
            raise ValueError("targets must be 0/1")
        targets = targets.astype(bool)
    return scores, targets


def split_mask(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(documents kept, codes kept) as boolean masks: codes with a positive, documents with one."""
    targets = np.asarray(targets, dtype=bool)
    return targets.any(axis=1), targets.any(axis=0)


def _filter(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scored sub-matrix. `take` by index is much faster than boolean indexing here."""
    keep_docs, keep_codes = split_mask(targets)
    if not keep_codes.any():
        raise ClemError("no document has a positive code: there is nothing to score")
    if not keep_codes.all():
        codes = np.flatnonzero(keep_codes)
        scores, targets = scores.take(codes, axis=1), targets.take(codes, axis=1)
    if not keep_docs.all():
        docs = np.flatnonzero(keep_docs)
        scores, targets = scores.take(docs, axis=0), targets.take(docs, axis=0)
    return scores, targets


def _transposed(matrix: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of matrix.T. Copying blocks of rows is several times faster than
    np.ascontiguousarray(matrix.T), whose strided reads miss the cache at MIMIC scale."""
    out = np.empty(matrix.shape[::-1], dtype=matrix.dtype)
    for start in range(0, matrix.shape[0], _TRANSPOSE_ROWS):
        out[:, start : start + _TRANSPOSE_ROWS] = matrix[start : start + _TRANSPOSE_ROWS].T
    return out


def _ratio(numerator, denominator) -> np.ndarray:
    """numerator / denominator elementwise, with 0/0 = 0 (Edin's `+ 1e-10`, made exact)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


# ---------------------------------------------------------------- ranks without a full argsort


def _search_rows(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, side: str):
    """np.searchsorted(sorted_rows[r], v, side) for many (r, v) pairs at once.

    numpy has no batched searchsorted; a vectorised binary search (log2(columns) steps over all
    queries) avoids a Python loop over rows."""
    flat = sorted_rows.reshape(-1)
    width = sorted_rows.shape[1]
    base = rows.astype(np.int64) * width
    lo = np.zeros(len(values), dtype=np.int64)
    hi = np.full(len(values), width, dtype=np.int64)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = np.minimum((lo + hi) // 2, width - 1)
        probe = flat[base + mid]
        go_right = (probe < values) if side == "left" else (probe <= values)
        lo = np.where(active & go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)


def _tied_before(scores: np.ndarray, rows, cols, values) -> np.ndarray:
    """How many entries in the same row hold exactly `value` at a lower column (tie-breaking)."""
    out = np.zeros(len(rows), dtype=np.int64)
    step = max(1, _CHUNK_CELLS // scores.shape[1])
    column = np.arange(scores.shape[1])
    for start in range(0, len(rows), step):
        part = slice(start, start + step)
        block = scores[rows[part]]  # only rows with ties, so this is small
        same = (block == values[part, None]) & (column < cols[part, None])
        out[part] = same.sum(axis=1)
    return out


def positions(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the positive cells, row by row (np.nonzero, faster on large matrices)."""
    return np.divmod(np.flatnonzero(targets), targets.shape[1])


def positive_ranks(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The rank of each given cell within its row, ranking the row by score, best first (1).

    Ties are broken by column order (a stable descending sort). Rather than argsort every row
    (slow), sort the values only and locate each cell by binary search; the few cells that tie
    with another entry of their row get their exact place by a direct count."""
    values = scores[rows, cols]
    sorted_rows = np.sort(scores, axis=1)
    below = _search_rows(sorted_rows, rows, values, "left")
    not_above = _search_rows(sorted_rows, rows, values, "right")
    rank = scores.shape[1] - not_above + 1  # 1 + how many score strictly higher
    tied = np.flatnonzero(not_above - below > 1)
    if len(tied):
        rank[tied] += _tied_before(scores, rows[tied], cols[tied], values[tied])
    return rank


def average_precision(rows: np.ndarray, ranks: np.ndarray, n_rows: int) -> np.ndarray:
    """Per-row AP from the ranks of the row's positives: mean over positives of hits/rank."""
    order = np.lexsort((ranks, rows))
    rows, ranks = rows[order], ranks[order]
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    hits = np.arange(len(rows)) - starts[rows] + 1  # i-th positive of its row, by rank
    precision_sum = np.bincount(rows, weights=hits / ranks, minlength=n_rows)
    return _ratio(precision_sum, counts)


def _midrank_sums(sorted_rows, rows, values, n_groups: int) -> np.ndarray:
    """Per group, the sum of the positives' mid-ranks among all entries of their row
    (the Mann-Whitney rank sum, with ties at the average rank)."""
    below = _search_rows(sorted_rows, rows, values, "left")
    not_above = _search_rows(sorted_rows, rows, values, "right")
    midrank = below + (not_above - below + 1) / 2.0
    return np.bincount(rows, weights=midrank, minlength=n_groups)


def _count_pooled(scores: np.ndarray, values: np.ndarray, sides=("left", "right")):
    """Over all cells of `scores`: how many are < each value and how many are <= it
    (np.searchsorted on the pooled, sorted cells). Sorting blocks of rows and adding the counts
    is several times faster than one sort of the whole matrix, and needs a block of memory."""
    counts = {side: np.zeros(len(values), dtype=np.int64) for side in ("left", "right")}
    block_cells = _BLOCK_CELLS_FEW if len(values) < 10_000 else _BLOCK_CELLS_MANY
    rows = max(1, block_cells // max(1, scores.shape[1]))
    for start in range(0, scores.shape[0], rows):
        block = np.sort(scores[start : start + rows], axis=None)
        for side in sides:
            counts[side] += np.searchsorted(block, values, side=side)
    return counts["left"], counts["right"]


def _auc_from_ranks(rank_sum, n_pos, n_neg) -> np.ndarray:
    """ROC AUC = (rank sum of positives - P(P+1)/2) / (P N); NaN where P N = 0."""
    n_pos = np.asarray(n_pos, dtype=np.float64)
    pairs = n_pos * np.asarray(n_neg, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, (rank_sum - n_pos * (n_pos + 1) / 2) / pairs, np.nan)


# ---------------------------------------------------------------- metric groups


def _predict(scores: np.ndarray, threshold: float) -> np.ndarray:
    """score > threshold, compared exactly. A Python float against a float32 array would be
    rounded to float32 first (NumPy 2), so float32(0.37) would not count as > 0.37; a float64
    scalar compares the exact values, as the searchsorted counts of tune_threshold do."""
    return scores > np.float64(threshold)


def _classification_metrics(scores, targets, threshold: float) -> dict[str, float]:
    predicted = _predict(scores, threshold)
    hit = predicted & targets
    n_docs = scores.shape[0]
    tp = np.count_nonzero(hit, axis=0)
    pred = np.count_nonzero(predicted, axis=0)
    pos = np.count_nonzero(targets, axis=0)
    fp, fn = pred - tp, pos - tp
    tn = n_docs - pos - fp
    # A document is an exact match when it predicts exactly its positives.
    doc_pred = np.count_nonzero(predicted, axis=1)
    doc_tp = np.count_nonzero(hit, axis=1)
    doc_pos = np.count_nonzero(targets, axis=1)
    exact = (doc_pred == doc_pos) & (doc_tp == doc_pos)
    return {
        "f1_micro": float(_ratio(tp.sum(), tp.sum() + (fp.sum() + fn.sum()) / 2)),
        "f1_macro": float(_ratio(tp, tp + (fp + fn) / 2).mean()),
        "precision_micro": float(_ratio(tp.sum(), pred.sum())),
        "precision_macro": float(_ratio(tp, pred).mean()),
        "recall_micro": float(_ratio(tp.sum(), pos.sum())),
        "recall_macro": float(_ratio(tp, pos).mean()),
        "fpr_micro": float(_ratio(fp.sum(), fp.sum() + tn.sum())),
        "fpr_macro": float(_ratio(fp, fp + tn).mean()),
        "exact_match_ratio": float(exact.mean()),
    }


def _ranking_metrics(scores, targets) -> dict[str, float]:
    n_docs = scores.shape[0]
    rows, cols = positions(targets)
    rank = positive_ranks(scores, rows, cols)
    n_pos = np.bincount(rows, minlength=n_docs)

    def hits_within(limit) -> np.ndarray:  # per document: positives ranked <= limit
        return np.bincount(rows[rank <= limit], minlength=n_docs)

    out = {f"precision@{k}": float((hits_within(k) / k).mean()) for k in PRECISION_AT}
    out |= {f"recall@{k}": float((hits_within(k) / n_pos).mean()) for k in RECALL_AT}
    out["map"] = float(average_precision(rows, rank, n_docs).mean())
    # R-precision: the limit is each document's own number of positives.
    out["precision@recall"] = float((hits_within(n_pos[rows]) / n_pos).mean())
    return out


def _auc_metrics(scores, targets) -> dict[str, float]:
    docs, codes = positions(targets)
    values = scores[docs, codes]
    below, not_above = _count_pooled(scores, np.sort(values))
    midrank = below + (not_above - below + 1) / 2.0  # among all scored cells, ties averaged
    micro = _auc_from_ranks(midrank.sum(), len(values), scores.size - len(values))

    # Macro: the same per code, on the columns (transposed so each code is one sorted row;
    # sorted in place to spare a second copy of the matrix).
    by_code = _transposed(scores)
    by_code.sort(axis=1)
    rank_sum = _midrank_sums(by_code, codes, values, scores.shape[1])
    n_pos = np.bincount(codes, minlength=scores.shape[1])
    per_code = _auc_from_ranks(rank_sum, n_pos, scores.shape[0] - n_pos)
    scored = ~np.isnan(per_code)  # skips codes without negatives
    macro = float(per_code[scored].mean()) if scored.any() else float("nan")
    return {"auc_micro": float(micro), "auc_macro": macro}


# ---------------------------------------------------------------- public API


def compute_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """Every metric of the protocol (keys: METRIC_KEYS) at `threshold` (prediction = score >
    threshold), always on the scored part of the split: the codes with at least one positive in
    `targets` and the documents with at least one positive; "documents" and "codes" give its
    size. Raises ClemError when no document has a positive, ValueError for a non-finite
    threshold. (tune_threshold, unlike this, uses the whole matrix unless `filtered=True`.)"""
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    scores, targets = _filter(*_as_arrays(scores, targets))
    metrics = _classification_metrics(scores, targets, float(threshold))
    metrics |= _ranking_metrics(scores, targets)
    metrics |= _auc_metrics(scores, targets)
    metrics["documents"] = int(scores.shape[0])
    metrics["codes"] = int(scores.shape[1])
    return {key: metrics[key] for key in METRIC_KEYS}


def micro_f1_at(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Micro F1 at each threshold (prediction = score > t), without a pass per threshold.

    F1 = tp / (tp + (fp + fn)/2) = 2 tp / (predicted + positives), and both counts are
    "how many scores are > t" = n - (how many are <= t), read off sorted values: exact for '>'."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    positives = np.sort(scores[targets])
    tp = len(positives) - np.searchsorted(positives, thresholds, side="right")
    _, not_above = _count_pooled(scores, thresholds, sides=("right",))
    predicted = scores.size - not_above
    return _ratio(2 * tp, predicted + len(positives))


def tune_threshold(
    val_scores: np.ndarray,
    val_targets: np.ndarray,
    *,
    filtered: bool = False,
    grid: np.ndarray = THRESHOLD_GRID,
) -> float:
    """The grid value with the best validation micro F1; ties go to the first (lowest) one.

    By default all codes and documents of val count, exactly as Edin et al.'s
    f1_score_db_tuning does (a code absent from val still costs its false positives, which
    is the right pressure for a threshold used on unseen data); `filtered=True` applies the
    scoring filter of compute_metrics first."""
    scores, targets = _as_arrays(val_scores, val_targets)
    if filtered:
        scores, targets = _filter(scores, targets)
    elif not targets.any():
        raise ClemError("no document has a positive code: there is nothing to tune on")
    f1 = micro_f1_at(scores, targets, grid)
    return float(grid[int(np.argmax(f1))])  # np.argmax returns the first maximum


def per_code_table(
    scores: np.ndarray,
    targets: np.ndarray,
    threshold: float,
    codes: Sequence[str],
    descriptions: Sequence[str] | None = None,
) -> pl.DataFrame:
    """One row per code of the label space: support, precision, recall, F1 and AP (over documents).

    Every code is listed, so the table lines up with the label space; codes without a positive
    in this split have support 0 and null metrics (they are not scored, as in compute_metrics).
    Metrics are computed on the documents compute_metrics scores, so the mean F1 of the rows with
    support > 0 equals f1_macro. AP ranks documents by the code's score, ties by document order.
    Sorted by support (descending), then code."""
    scores, targets = _as_arrays(scores, targets)
    n_codes = scores.shape[1]
    if len(codes) != n_codes:
        raise ValueError(f"{len(codes)} codes for {n_codes} score columns")
    if descriptions is not None and len(descriptions) != n_codes:
        raise ValueError(f"{len(descriptions)} descriptions for {n_codes} codes")
    keep_docs, _ = split_mask(targets)
    if not keep_docs.all():
        scores, targets = scores[keep_docs], targets[keep_docs]

    predicted = _predict(scores, threshold)
    tp = np.count_nonzero(predicted & targets, axis=0)
    pred = np.count_nonzero(predicted, axis=0)
    support = np.count_nonzero(targets, axis=0)
    # AP per code: rank the documents within each code's column (a row of the transpose).
    docs, code_index = positions(targets)
    ranks = positive_ranks(_transposed(scores), code_index, docs)
    ap = average_precision(code_index, ranks, n_codes)

    scored = support > 0

    def nullable(values):  # null where the code has no positive in this split
        return pl.Series(np.where(scored, values, np.nan), dtype=pl.Float64).fill_nan(None)

    table = pl.DataFrame({
        "code": pl.Series(list(map(str, codes)), dtype=pl.String),
        "description": pl.Series(
            list(descriptions) if descriptions is not None else [None] * n_codes, dtype=pl.String
        ),
        "support": pl.Series(support, dtype=pl.Int64),
        "precision": nullable(_ratio(tp, pred)),
        "recall": nullable(_ratio(tp, support)),
        "f1": nullable(_ratio(tp, tp + (pred - tp + support - tp) / 2)),
        "ap": nullable(ap),
    })
    return table.sort(["support", "code"], descending=[True, False])
