"""The Edin et al. (2023) evaluation protocol: a hand-worked example, edge cases, and agreement
with scikit-learn and with naive reference loops on random data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from clem_icd.errors import ClemError
from clem_icd.evaluation import METRIC_KEYS, THRESHOLD_GRID, compute_metrics, tune_threshold
from clem_icd.evaluation.metrics import micro_f1_at, per_code_table, positions, positive_ranks

# ------------------------------------------------------------------ the hand-worked example
#
# Codes A B C D E, documents d0..d3, threshold 0.5.
# E has no positive in this split and d3 has no positive: both are left out, so the scored
# matrix is d0..d2 x A..D (3 documents, 4 codes). E's high scores in d0/d1 and d3's 0.9 everywhere
# would change ranks, AP and AUC if they were wrongly kept.
CODES = ["A", "B", "C", "D", "E"]
TARGETS = np.array([
    # A  B  C  D  E
    [1, 0, 1, 0, 0],  # d0
    [0, 1, 0, 0, 0],  # d1
    [1, 1, 0, 1, 0],  # d2
    [0, 0, 0, 0, 0],  # d3: no positive -> left out
])
SCORES = np.array([
    # A    B     C     D     E
    [0.9, 0.6, 0.3, 0.1, 0.8],    # d0
    [0.3, 0.7, 0.2, 0.5, 0.95],   # d1: D == threshold -> negative (strict '>')
    [0.8, 0.55, 0.35, 0.45, 0.05],  # d2
    [0.9, 0.9, 0.9, 0.9, 0.9],    # d3
])
# Predictions (> 0.5) on the scored part:
#   d0: A B      (targets A C)   d1: B   (targets B: exact match)   d2: A B   (targets A B D)
# Per code (tp fp fn tn over d0..d2):
#   A: pos d0 d2, pred d0 d2       -> tp 2 fp 0 fn 0 tn 1
#   B: pos d1 d2, pred d0 d1 d2    -> tp 2 fp 1 fn 0 tn 0
#   C: pos d0,    pred none        -> tp 0 fp 0 fn 1 tn 2
#   D: pos d2,    pred none        -> tp 0 fp 0 fn 1 tn 2   (d1's 0.5 is not > 0.5)
# Micro: tp 4 fp 1 fn 2 tn 5 (12 cells).
#   precision 4/5 = 0.8; recall 4/6; F1 = 4 / (4 + (1+2)/2) = 4/5.5; FPR = 1/(1+5) = 1/6
# Macro (0/0 = 0):
#   precision A 2/2=1, B 2/3, C 0/0=0, D 0/0=0        -> (1 + 2/3) / 4 = 5/12
#   recall    A 1, B 1, C 0, D 0                       -> 2/4 = 0.5
#   F1        A 2/2=1, B 2/(2+0.5)=0.8, C 0, D 0       -> 1.8/4 = 0.45
#   FPR       A 0/1=0, B 1/1=1, C 0/2=0, D 0/2=0        -> 1/4
# Exact match: d0 no, d1 yes, d2 no -> 1/3.
# Ranking (codes A..D only), best first:
#   d0: A .9, B .6, C .3, D .1   positives A C at ranks 1, 3   (R = 2)
#   d1: B .7, D .5, A .3, C .2   positive  B   at rank 1       (R = 1)
#   d2: A .8, B .55, D .45, C .35 positives A B D at ranks 1 2 3 (R = 3)
#   P@5 = mean(2/5, 1/5, 3/5) = 0.4 (k > 4 codes still divides by k); P@8 = 6/8/3 = 0.25;
#   P@15 = 6/15/3 = 2/15; R@10 = R@15 = 1 (every positive is within the 4 codes)
#   AP: d0 (1/1 + 2/3)/2 = 5/6, d1 1, d2 (1 + 1 + 1)/3 = 1   -> mAP = (5/6 + 2)/3 = 17/18
#   R-precision: d0 top-2 {A,B} -> 1/2; d1 top-1 {B} -> 1; d2 top-3 {A,B,D} -> 1 -> 2.5/3 = 5/6
# AUC micro: positives .9 .3 .7 .8 .55 .45, negatives .6 .1 .3 .2 .5 .35 (one tie at .3);
#   negatives below each positive: 6, 2 + 0.5 (tie), 6, 6, 5, 4 = 29.5 -> 29.5 / 36
# AUC macro: A pos .9 .8 vs neg .3 -> 1; B pos .7 .55 vs neg .6 -> 1/2;
#   C pos .3 vs neg .2 .35 -> 1/2; D pos .45 vs neg .1 .5 -> 1/2   -> 2.5/4 = 0.625
HAND = {
    "f1_micro": 4 / 5.5, "f1_macro": 0.45,
    "precision_micro": 0.8, "precision_macro": 5 / 12,
    "recall_micro": 4 / 6, "recall_macro": 0.5,
    "fpr_micro": 1 / 6, "fpr_macro": 0.25,
    "exact_match_ratio": 1 / 3,
    "precision@5": 0.4, "precision@8": 0.25, "precision@15": 2 / 15,
    "recall@10": 1.0, "recall@15": 1.0,
    "map": 17 / 18, "precision@recall": 5 / 6,
    "auc_micro": 29.5 / 36, "auc_macro": 0.625,
    "documents": 3, "codes": 4,
}


def test_hand_worked_example():
    metrics = compute_metrics(SCORES, TARGETS, 0.5)
    assert list(metrics) == list(METRIC_KEYS)
    assert metrics == pytest.approx(HAND, abs=1e-12)
    assert isinstance(metrics["documents"], int) and isinstance(metrics["codes"], int)


def test_absent_code_and_empty_document_do_not_count():
    # Dropping E and d3 by hand gives the very same numbers.
    assert compute_metrics(SCORES[:3, :4], TARGETS[:3, :4], 0.5) == pytest.approx(HAND, abs=1e-12)


def test_float32_scores_give_the_same_numbers():
    # float32(0.5) is exactly 0.5, so the strict comparison is unchanged; other values round
    # but keep their order, and the tie at 0.3 stays a tie.
    metrics = compute_metrics(SCORES.astype(np.float32), TARGETS, 0.5)
    assert metrics == pytest.approx(HAND, abs=1e-7)


def test_threshold_is_strict():
    scores = np.array([[0.5, 0.5000001], [0.2, 0.7]])
    targets = np.array([[1, 1], [0, 1]])
    metrics = compute_metrics(scores, targets, 0.5)
    # 0.5 is not > 0.5: tp 2 of 3 positives, no false positive.
    assert metrics["recall_micro"] == pytest.approx(2 / 3)
    assert metrics["precision_micro"] == 1.0
    assert compute_metrics(scores, targets, 0.4999999)["recall_micro"] == 1.0


def test_float32_scores_are_compared_exactly():
    # float32(0.37) = 0.370000004768... is > 0.37, although NumPy would round the Python float
    # 0.37 to that same float32 in a plain `scores > 0.37`.
    scores = np.array([[np.float32(0.37), 0.9], [0.1, np.float32(0.37)]], dtype=np.float32)
    targets = np.array([[1, 1], [0, 1]])
    assert compute_metrics(scores, targets, 0.37)["recall_micro"] == 1.0
    table = per_code_table(scores, targets, 0.37, ["A", "B"])
    assert table["recall"].to_list() == [1.0, 1.0]


def test_tuned_threshold_f1_is_the_f1_compute_metrics_reports():
    # float32 scores sitting on float32-rounded grid values: tuning and evaluation must agree.
    scores, targets = _random_case(10)
    scores[::3, ::2] = THRESHOLD_GRID[[20, 40, 60]][np.arange(scores[::3, ::2].size) % 3].reshape(
        scores[::3, ::2].shape
    )
    scores = scores.astype(np.float32)
    s, t = _scored(scores, targets.astype(bool))
    curve = micro_f1_at(s, t, THRESHOLD_GRID)
    for i in (20, 40, 60, 61):
        f1 = compute_metrics(scores, targets, THRESHOLD_GRID[i])["f1_micro"]
        assert f1 == pytest.approx(curve[i], abs=1e-12)


def test_nothing_to_score_is_an_error():
    with pytest.raises(ClemError, match="nothing to score"):
        compute_metrics(np.ones((2, 3)) / 2, np.zeros((2, 3)), 0.5)


@pytest.mark.parametrize(
    "scores, targets, message",
    [
        (np.zeros((2, 3)), np.zeros((3, 2)), "one shape"),
        (np.zeros(3), np.zeros(3), "2-D"),
        (np.array([[np.nan, 0.1]]), np.array([[1, 0]]), "NaN"),
        (np.array([[0.2, 0.1]]), np.array([[2, 0]]), "0/1"),
    ],
)
def test_bad_input(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(scores, targets, 0.5)


def test_auc_macro_skips_codes_without_negatives():
    # Code 0 is positive in every document: no ROC curve (Edin skips its NaN curve).
    # Code 1: positive .8 vs negative .6 -> 1.0. FPR for code 0 is 0/0 = 0.
    scores = np.array([[0.9, 0.8], [0.1, 0.6]])
    targets = np.array([[1, 1], [1, 0]])
    metrics = compute_metrics(scores, targets, 0.5)
    assert metrics["auc_macro"] == 1.0
    assert metrics["fpr_macro"] == pytest.approx((0 + 1) / 2)  # code 1: .6 is a false positive
    # Pooled: positives .9 .8 .1 vs the negative .6 -> 2 of 3 pairs.
    assert metrics["auc_micro"] == pytest.approx(2 / 3)


def test_auc_undefined_is_nan():
    metrics = compute_metrics(np.array([[0.9, 0.2]]), np.array([[1, 1]]), 0.5)
    assert np.isnan(metrics["auc_micro"]) and np.isnan(metrics["auc_macro"])


# ------------------------------------------------------------------ ties in rankings


def test_ranking_ties_break_by_column_order():
    # d0: the positive (column 1) ties with negatives at columns 0 and 2; the stable order puts
    # column 0 first, so the positive is rank 2. (d1 gives columns 0, 2, 3 a positive so that they
    # are scored: ranks 1 2 3 for .9 .8 .7, AP 1, R-precision 1, P@5 3/5.)
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [0.9, 0.1, 0.8, 0.7]])
    targets = np.array([[0, 1, 0, 0], [1, 0, 1, 1]])
    rows, cols = positions(targets)
    assert rows.tolist() == [0, 1, 1, 1] and cols.tolist() == [1, 0, 2, 3]
    assert positive_ranks(scores, rows, cols).tolist() == [2, 1, 2, 3]
    metrics = compute_metrics(scores, targets, 0.5)
    assert metrics["map"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["precision@recall"] == pytest.approx((0 + 1) / 2)  # d0's top-1 is column 0
    assert metrics["precision@5"] == pytest.approx((1 / 5 + 3 / 5) / 2)


def _reference_ranking(scores, targets):
    """Naive per-document loops with a stable argsort: P@k, R@k, R-precision, mAP."""
    out = {f"precision@{k}": [] for k in (5, 8, 15)} | {f"recall@{k}": [] for k in (10, 15)}
    out |= {"map": [], "precision@recall": []}
    for row_scores, row_targets in zip(scores, targets):
        ranked = row_targets[np.argsort(-row_scores, kind="stable")].astype(float)
        n_pos = ranked.sum()
        for k in (5, 8, 15):
            out[f"precision@{k}"].append(ranked[:k].sum() / k)
        for k in (10, 15):
            out[f"recall@{k}"].append(ranked[:k].sum() / n_pos)
        out["precision@recall"].append(ranked[: int(n_pos)].sum() / n_pos)
        hits = np.cumsum(ranked)
        out["map"].append((hits / np.arange(1, len(ranked) + 1) * ranked).sum() / n_pos)
    return {key: float(np.mean(values)) for key, values in out.items()}


def _random_case(seed, docs=300, codes=40, rate=0.12, decimals=None):
    rng = np.random.default_rng(seed)
    targets = (rng.random((docs, codes)) < rate).astype(np.int64)
    targets[:, :3] = 0  # three codes absent from the split
    targets[:5] = 0  # five documents without a code
    scores = np.clip(rng.random((docs, codes)) * 0.7 + 0.3 * targets, 0, 1)
    if decimals is not None:
        scores = np.round(scores, decimals)  # many ties
    return scores, targets


def _scored(scores, targets):
    docs, codes = targets.any(axis=1), targets.any(axis=0)
    return scores[docs][:, codes], targets[docs][:, codes]


@pytest.mark.parametrize("decimals", [None, 1])
def test_ranking_metrics_match_reference_loops(decimals):
    scores, targets = _random_case(1, decimals=decimals)
    metrics = compute_metrics(scores, targets, 0.5)
    reference = _reference_ranking(*_scored(scores, targets))
    assert {key: metrics[key] for key in reference} == pytest.approx(reference, abs=1e-12)


# ------------------------------------------------------------------ agreement with scikit-learn


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.77])
def test_classification_metrics_match_sklearn(seed, threshold):
    scores, targets = _random_case(seed)
    metrics = compute_metrics(scores, targets, threshold)
    s, t = _scored(scores, targets)
    pred = (s > threshold).astype(int)
    assert metrics["documents"] == s.shape[0] and metrics["codes"] == s.shape[1]
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(t, pred, average=average, zero_division=0)
        assert metrics[f"precision_{average}"] == pytest.approx(p, abs=1e-12)
        assert metrics[f"recall_{average}"] == pytest.approx(r, abs=1e-12)
        assert metrics[f"f1_{average}"] == pytest.approx(f, abs=1e-12)
    confusion = multilabel_confusion_matrix(t, pred)  # per code [[tn, fp], [fn, tp]]
    tn, fp = confusion[:, 0, 0], confusion[:, 0, 1]
    assert metrics["fpr_micro"] == pytest.approx(fp.sum() / (fp.sum() + tn.sum()), abs=1e-12)
    assert metrics["fpr_macro"] == pytest.approx(np.mean(fp / (fp + tn)), abs=1e-12)
    assert metrics["exact_match_ratio"] == pytest.approx(accuracy_score(t, pred), abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_auc_matches_sklearn(decimals):
    scores, targets = _random_case(3, decimals=decimals)
    metrics = compute_metrics(scores, targets, 0.5)
    s, t = _scored(scores, targets)
    assert metrics["auc_micro"] == pytest.approx(roc_auc_score(t.ravel(), s.ravel()), abs=1e-12)
    per_code = [roc_auc_score(t[:, j], s[:, j]) for j in range(t.shape[1]) if 0 < t[:, j].sum()
                < len(t)]
    assert metrics["auc_macro"] == pytest.approx(np.mean(per_code), abs=1e-12)


def test_map_matches_sklearn_average_precision_per_document():
    scores, targets = _random_case(4)  # continuous scores: no ties, where all AP variants agree
    metrics = compute_metrics(scores, targets, 0.5)
    s, t = _scored(scores, targets)
    expected = np.mean([average_precision_score(t[d], s[d]) for d in range(len(t))])
    assert metrics["map"] == pytest.approx(expected, abs=1e-12)


def test_per_code_ap_matches_sklearn():
    scores, targets = _random_case(5)
    table = per_code_table(scores, targets, 0.5, [f"C{j:02d}" for j in range(targets.shape[1])])
    keep = targets.any(axis=1)
    by_code = dict(zip(table["code"], table["ap"]))
    for j in range(targets.shape[1]):
        if targets[:, j].any():
            expected = average_precision_score(targets[keep, j], scores[keep, j])
            assert by_code[f"C{j:02d}"] == pytest.approx(expected, abs=1e-12)
        else:
            assert by_code[f"C{j:02d}"] is None


# ------------------------------------------------------------------ threshold tuning


def _naive_micro_f1(scores, targets, grid):
    """One pass per threshold, as Edin's f1_score_db_tuning does."""
    f1 = []
    for threshold in grid:
        pred = scores > threshold
        tp = (pred & targets).sum()
        fp, fn = (pred & ~targets).sum(), (~pred & targets).sum()
        f1.append(tp / (tp + (fp + fn) / 2) if tp + fp + fn else 0.0)
    return np.array(f1)


def test_tune_threshold_constructed_case():
    # Positives .9 .8 .6; negatives .7, exactly grid[30] (= 30/99 ~ .303) and .1.
    # F1 = 2 tp / (predicted + 3):
    #   t <  .1            : 6 predicted, tp 3 -> 6/9
    #   .1 <= t < grid[30] : 5, 3 -> 6/8
    #   grid[30] <= t < .6 : 4, 3 -> 6/7   <- best; grid[30] itself counts because the negative
    #                                        at exactly grid[30] is not > grid[30]
    #   .6 <= t < .7       : 3, 2 -> 4/6;  .7 <= t < .8: 2, 2 -> 4/5;  .8 <= t < .9: 1, 1 -> 2/4
    # The plateau grid[30..59] ties; the first (lowest) wins.
    # (Laid out so that every code and document has a positive, so filtering keeps all cells.)
    scores = np.array([[0.9, 0.7, 0.8], [THRESHOLD_GRID[30], 0.6, 0.1]])
    targets = np.array([[1, 0, 1], [0, 1, 0]])
    assert tune_threshold(scores, targets) == THRESHOLD_GRID[30]
    f1 = micro_f1_at(scores.astype(float), targets.astype(bool), THRESHOLD_GRID)
    assert f1[29] == pytest.approx(6 / 8) and f1[30] == pytest.approx(6 / 7)
    assert f1.max() == pytest.approx(6 / 7)


def test_threshold_grid_is_edins():
    assert len(THRESHOLD_GRID) == 100 and THRESHOLD_GRID[0] == 0.0 and THRESHOLD_GRID[-1] == 1.0
    assert np.allclose(np.diff(THRESHOLD_GRID), 1 / 99)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_micro_f1_curve_matches_naive_loop(dtype):
    scores, targets = _random_case(6)
    scores[::7, ::3] = THRESHOLD_GRID[40]  # scores exactly on the grid: strictness matters
    scores = scores.astype(dtype)
    s, t = _scored(scores, targets.astype(bool))
    expected = _naive_micro_f1(s, t, THRESHOLD_GRID)
    assert micro_f1_at(s, t, THRESHOLD_GRID) == pytest.approx(expected, abs=1e-12)
    assert tune_threshold(scores, targets) == THRESHOLD_GRID[int(np.argmax(expected))]


def test_tune_threshold_unfiltered_matches_edin_variant():
    # An absent code with high scores adds false positives only when nothing is filtered.
    scores, targets = _random_case(8)
    scores[:, 0] = 0.95  # code 0 is absent from the split (see _random_case)
    full = _naive_micro_f1(scores, targets.astype(bool), THRESHOLD_GRID)
    chosen = tune_threshold(scores, targets, filtered=False)
    assert chosen == THRESHOLD_GRID[int(np.argmax(full))]
    s, t = _scored(scores, targets.astype(bool))
    filtered = _naive_micro_f1(s, t, THRESHOLD_GRID)
    assert tune_threshold(scores, targets, filtered=True) == THRESHOLD_GRID[int(np.argmax(filtered))]
    # and the two modes do choose differently: code 1, absent, scores 0.5 in both documents
    small_scores, small_targets = np.array([[0.6, 0.5], [0.6, 0.5]]), np.array([[1, 0], [1, 0]])
    assert tune_threshold(small_scores, small_targets, filtered=True) == THRESHOLD_GRID[0]
    assert tune_threshold(small_scores, small_targets) == THRESHOLD_GRID[50]  # the first value above 0.5


def test_tune_threshold_with_nothing_to_tune_on():
    with pytest.raises(ClemError):
        tune_threshold(np.ones((2, 2)) / 2, np.zeros((2, 2)))


# ------------------------------------------------------------------ per-code table


def test_per_code_table_hand_example():
    table = per_code_table(SCORES, TARGETS, 0.5, CODES, [f"code {c}" for c in CODES])
    assert table.columns == ["code", "description", "support", "precision", "recall", "f1", "ap"]
    rows = {row["code"]: row for row in table.iter_rows(named=True)}
    # Sorted by support, then code: A(2) B(2) C(1) D(1) E(0).
    assert table["code"].to_list() == ["A", "B", "C", "D", "E"]
    # AP per code over d0..d2 (d3 is left out; with its 0.9 scores kept, B's AP would drop to .5):
    #   A: .9 (d0 +), .8 (d2 +), .3 (d1 -)        -> ranks 1 2 -> 1
    #   B: .7 (d1 +), .6 (d0 -), .55 (d2 +)        -> ranks 1 3 -> (1 + 2/3)/2 = 5/6
    #   C: .35 (d2 -), .3 (d0 +), .2 (d1 -)        -> rank 2 -> 1/2
    #   D: .5 (d1 -), .45 (d2 +), .1 (d0 -)        -> rank 2 -> 1/2
    expected = {
        "A": (2, 1.0, 1.0, 1.0, 1.0),
        "B": (2, 2 / 3, 1.0, 0.8, 5 / 6),
        "C": (1, 0.0, 0.0, 0.0, 0.5),
        "D": (1, 0.0, 0.0, 0.0, 0.5),
    }
    for code, (support, precision, recall, f1, ap) in expected.items():
        row = rows[code]
        assert row["support"] == support and row["description"] == f"code {code}"
        assert (row["precision"], row["recall"], row["f1"], row["ap"]) == pytest.approx(
            (precision, recall, f1, ap), abs=1e-12
        )
    assert rows["E"]["support"] == 0
    assert [rows["E"][key] for key in ("precision", "recall", "f1", "ap")] == [None] * 4
    # Its mean F1 over scored codes is the macro F1 of compute_metrics.
    assert table["f1"].drop_nulls().mean() == pytest.approx(HAND["f1_macro"], abs=1e-12)


def test_per_code_table_without_descriptions_and_length_checks():
    table = per_code_table(SCORES, TARGETS, 0.5, CODES)
    assert table["description"].null_count() == len(CODES)
    with pytest.raises(ValueError, match="codes"):
        per_code_table(SCORES, TARGETS, 0.5, CODES[:-1])
    with pytest.raises(ValueError, match="descriptions"):
        per_code_table(SCORES, TARGETS, 0.5, CODES, ["x"])


def test_blockwise_counting_gives_the_same_numbers(monkeypatch):
    # Real splits are sorted and counted in blocks of rows; force many tiny blocks here.
    import clem_icd.evaluation.metrics as metrics_module

    scores, targets = _random_case(9, decimals=2)
    expected = compute_metrics(scores, targets, 0.5), tune_threshold(scores, targets)
    codes = [str(j) for j in range(targets.shape[1])]
    table = per_code_table(scores, targets, 0.5, codes)
    for name in ("_BLOCK_CELLS_FEW", "_BLOCK_CELLS_MANY", "_CHUNK_CELLS", "_TRANSPOSE_ROWS"):
        monkeypatch.setattr(metrics_module, name, 7)
    assert compute_metrics(scores, targets, 0.5) == expected[0]
    assert tune_threshold(scores, targets) == expected[1]
    assert per_code_table(scores, targets, 0.5, codes).equals(table)


def test_short_import_path_is_the_same_protocol():
    import clem_icd.metrics as short
    from clem_icd.evaluation import metrics as full

    assert short.compute_metrics is full.compute_metrics and short.tune_threshold is full.tune_threshold


def test_predict_and_metrics_choose_the_same_codes_for_a_score_between_float32_and_float64_of_the_threshold():
    """choose_codes (predict, serve) and the metrics (evaluate) compare score > threshold the
    same way: the float32 score's exact value against the float64 threshold."""
    from clem_icd.choice import choose_codes

    threshold = 0.31
    score = np.float32(0.31)
    # The case: float32(0.31) is above 0.31, but not above 0.31 rounded to float32.
    assert float(score) > threshold and not score > np.float32(threshold)
    below = np.nextafter(score, np.float32(0))  # the float32 just under it, which is under 0.31
    assert float(below) < threshold
    scores = np.array([[score, below, 0.9], [below, score, 0.1]], dtype=np.float32)
    chosen = [choose_codes(row, threshold, None) for row in scores]
    assert chosen == [[2, 0], [1]]  # best first; the float32(0.31) scores are in, the ones below out
    # Targets = exactly what predict chose: the metrics at the same threshold see no error.
    targets = np.zeros(scores.shape, dtype=bool)
    for i, columns in enumerate(chosen):
        targets[i, columns] = True
    metrics = compute_metrics(scores, targets, threshold)
    assert metrics["exact_match_ratio"] == 1.0
    assert metrics["precision_micro"] == metrics["recall_micro"] == 1.0
