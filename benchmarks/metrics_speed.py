"""Speed of the evaluation protocol at MIMIC-IV scale.

Times compute_metrics, tune_threshold and per_code_table on a random documents x codes matrix
(default 20,000 x 8,000, about 15 positives per document drawn from a skewed code distribution,
float32 scores as a model emits), and beside tune_threshold a naive loop with one pass over the
matrix per threshold (Edin's f1_score_db_tuning, in numpy) on a slice, scaled to the full size.

usage: python benchmarks/metrics_speed.py [--docs 20000] [--codes 8000] [--per-doc 15]
                                          [--naive-docs 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clem_icd.evaluation.metrics import (
    THRESHOLD_GRID,
    _filter,
    compute_metrics,
    per_code_table,
    tune_threshold,
)


def random_split(docs: int, codes: int, per_doc: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse targets with a long-tailed code frequency (some codes never occur, as in a real
    split) and float32 sigmoid scores of a fair model: logits N(-7, 2) for negatives and
    N(0.5, 2) for positives, so most scores are tiny and some saturate (ties)."""
    rng = np.random.default_rng(seed)
    weight = 1.0 / (np.arange(codes) + 20.0) ** 1.3
    drawn = rng.choice(codes, size=(docs, per_doc), p=weight / weight.sum())
    targets = np.zeros((docs, codes), dtype=bool)
    targets[np.arange(docs)[:, None], drawn] = True  # repeats collapse: "about" per_doc
    logits = rng.standard_normal((docs, codes), dtype=np.float32) * 2 - 7
    logits[targets] += 7.5
    scores = 1 / (1 + np.exp(-logits))
    return scores, targets


def naive_tune(scores: np.ndarray, targets: np.ndarray) -> float:
    """One full pass over the matrix per threshold, first argmax of micro F1."""
    f1 = []
    for threshold in THRESHOLD_GRID:
        pred = scores > threshold
        tp = np.count_nonzero(pred & targets)
        fp = np.count_nonzero(pred) - tp
        fn = np.count_nonzero(targets) - tp
        f1.append(tp / (tp + (fp + fn) / 2))
    return float(THRESHOLD_GRID[int(np.argmax(f1))])


def timed(label: str, function, *args):
    start = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - start
    print(f"{label:<44} {seconds:8.2f} s")
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--codes", type=int, default=8_000)
    parser.add_argument("--per-doc", type=int, default=15)
    parser.add_argument("--naive-docs", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    (scores, targets), _ = timed("generate data", random_split, args.docs, args.codes,
                                 args.per_doc, args.seed)
    print(f"{args.docs:,} documents x {args.codes:,} codes, "
          f"{targets.sum() / args.docs:.1f} positives per document, "
          f"{targets.any(axis=0).sum():,} codes occur\n")

    threshold, tune_s = timed("tune_threshold (vectorised)", tune_threshold, scores, targets)
    metrics, _ = timed("compute_metrics", compute_metrics, scores, targets, threshold)
    timed("per_code_table", per_code_table, scores, targets, threshold,
          [f"C{j}" for j in range(args.codes)])

    # The naive loop on a slice, on the same scored (filtered) cells the vectorised one sees.
    part_scores, part_targets = _filter(scores[: args.naive_docs], targets[: args.naive_docs])
    naive, naive_s = timed(f"naive per-threshold loop ({args.naive_docs:,} docs)",
                           naive_tune, part_scores, part_targets)
    fast, fast_s = timed(f"tune_threshold ({args.naive_docs:,} docs)",
                         tune_threshold, part_scores, part_targets)
    assert naive == fast, (naive, fast)
    scale = args.docs / args.naive_docs
    print(f"\nnaive loop scaled to {args.docs:,} docs: {naive_s * scale:.1f} s "
          f"vs {tune_s:.1f} s vectorised: {naive_s * scale / tune_s:.1f}x "
          f"(on the slice: {naive_s / fast_s:.1f}x); both choose {naive:.4f} on the slice")
    print(f"tuned threshold {threshold:.4f}: micro F1 {metrics['f1_micro']:.4f}, "
          f"macro F1 {metrics['f1_macro']:.4f}, mAP {metrics['map']:.4f}, "
          f"AUC micro {metrics['auc_micro']:.4f}")


if __name__ == "__main__":
    main()
