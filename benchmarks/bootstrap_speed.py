"""Speed of the bootstrap intervals (clem_icd.evaluation.bootstrap) against the plain loop it
replaces (compute_metrics on each resampled matrix), on the random split of metrics_speed.py.

usage: python benchmarks/bootstrap_speed.py [--docs 1000] [--codes 500] [--resamples 1000]
                                            [--loop-resamples 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from metrics_speed import random_split

from clem_icd.evaluation.bootstrap import bootstrap_samples
from clem_icd.evaluation.metrics import compute_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--codes", type=int, default=500)
    parser.add_argument("--per-doc", type=int, default=15)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--loop-resamples", type=int, default=50, help="resamples timed for the loop (scaled up)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scores, targets = random_split(args.docs, args.codes, args.per_doc, args.seed)
    threshold = 0.3
    started = time.perf_counter()
    bootstrap_samples(scores, targets, threshold, resamples=args.resamples, seed=args.seed)
    vectorised = time.perf_counter() - started

    keep = targets.any(axis=1)
    scores, targets = scores[keep], targets[keep]
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    for _ in range(args.loop_resamples):
        drawn = rng.integers(0, len(scores), size=len(scores))
        compute_metrics(scores[drawn], targets[drawn], threshold)
    looped = (time.perf_counter() - started) * args.resamples / args.loop_resamples
    print(f"{args.resamples:,} resamples of {len(scores):,} notes x {int(targets.any(axis=0).sum()):,} codes: "
          f"bootstrap {vectorised:.1f} s, loop of compute_metrics {looped:.1f} s "
          f"(scaled from {args.loop_resamples}), {looped / vectorised:.1f}x")


if __name__ == "__main__":
    main()
