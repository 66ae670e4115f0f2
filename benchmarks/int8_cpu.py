"""Is a CPU int8 mode worth having? fp32 against torchao dynamic int8 (int8 activations per
token, int8 weights per channel: `Int8DynamicActivationInt8WeightConfig`) side by side in one
process, on the same notes, through the public `coder.predict_proba(texts, batch_size=8)`.

Command (issue 9, item 4; 2 CPU threads; needs torchao, which the project does not depend on -
without it: "error: needs torchao (pip install torchao)", exit status 2):
    bash benchmarks/codiesp_runs.sh runs/codiesp minilm_cross_desc   # the model and its data
    HF_HUB_OFFLINE=1 python benchmarks/int8_cpu.py --model runs/codiesp/minilm_cross_desc \
        --data runs/codiesp/data --notes 40 --out int8_cpu.json

What is quantized: every nn.Linear of the encoder (attention q/k/v/output, feed-forward). The
head stays fp32 (its key/value projections are nn.Linear but are left out; its label queries and
read-out are plain parameters). Weights are quantized once, before any timing.

What it measures, on a fixed random sample (seed 0) of --notes notes of the split (all of it
when --notes is 0 or larger than the split):
- agreement of int8 with fp32: top-8 overlap per note (|top8_fp32 & top8_int8| / 8, averaged)
  and the fraction of notes with identical top-8 sets; the max absolute probability
  difference; at the model's tuned threshold, the fraction of notes whose predicted code sets
  are identical and their mean Jaccard (two empty sets count as identical);
- micro F1 (at the tuned threshold) and mAP of each against the gold codes, with
  clem_icd.evaluation.metrics.compute_metrics (on the sample only: the codes with a positive in
  it, so not comparable to a full-split evaluation);
- notes/second of each over the whole sample, timed fp32, int8, fp32 (the fp32 figure is the
  faster of its two passes; the machine is shared and noisy: read the ratio).
The criterion of the issue: int8 is worth keeping only if top-8 agreement >= 0.99 AND it is
faster.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from _shared import fail, require

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clem_icd.data.labels import label_indices, multi_hot  # noqa: E402
from clem_icd.evaluation.metrics import compute_metrics  # noqa: E402
from clem_icd.model import ICDCoder  # noqa: E402

TOP_K = 8


def load_torchao():
    """(torchao version, quantize_, Int8DynamicActivationInt8WeightConfig), or fail."""
    # torchao logs a warning per optional CUDA extension it cannot load; irrelevant on CPU.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        fail("needs torchao (pip install torchao)")
    return torchao.__version__, quantize_, Int8DynamicActivationInt8WeightConfig


def sample_notes(data: Path, split: str, count: int, seed: int = 0) -> pl.DataFrame:
    documents = pl.read_parquet(require(data / "documents.parquet")).filter(pl.col("split") == split)
    if documents.is_empty():
        fail(f"{data / 'documents.parquet'} has no notes in split '{split}'")
    if 0 < count < len(documents):
        documents = documents.sample(n=count, seed=seed, shuffle=True)
    return documents


def timed(coder: ICDCoder, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    probabilities = coder.predict_proba(texts, batch_size=batch_size)
    return probabilities, time.perf_counter() - start


def top_sets(probabilities: np.ndarray, k: int) -> list[set[int]]:
    return [set(row) for row in np.argsort(-probabilities, axis=1, kind="stable")[:, :k].tolist()]


def agreement(fp32: np.ndarray, int8: np.ndarray, threshold: float) -> dict[str, float]:
    top_a, top_b = top_sets(fp32, TOP_K), top_sets(int8, TOP_K)
    above_a = [set(np.flatnonzero(row > threshold).tolist()) for row in fp32]
    above_b = [set(np.flatnonzero(row > threshold).tolist()) for row in int8]
    jaccard = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in zip(above_a, above_b)]
    return {
        f"top{TOP_K}_agreement": float(np.mean([len(a & b) / TOP_K for a, b in zip(top_a, top_b)])),
        f"top{TOP_K}_identical": float(np.mean([a == b for a, b in zip(top_a, top_b)])),
        "max_abs_prob_diff": float(np.abs(fp32.astype(np.float64) - int8).max()),
        "threshold_sets_identical": float(np.mean([a == b for a, b in zip(above_a, above_b)])),
        "threshold_sets_jaccard": float(np.mean(jaccard)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained coder's folder")
    parser.add_argument("--data", required=True, help="a prepared dataset folder (documents.parquet)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--notes", type=int, default=40, help="fixed random sample size (0: the whole split)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    model, data = require(args.model), require(args.data)
    version, quantize_, Int8Config = load_torchao()
    torch.set_num_threads(args.threads)

    notes = sample_notes(data, args.split, args.notes)
    texts = notes["text"].to_list()
    fp32 = ICDCoder.from_pretrained(model, device="cpu").eval()
    int8 = copy.deepcopy(fp32)
    quantize_(int8.encoder, Int8Config())
    quantized = sum(type(m.weight).__name__ != "Parameter" for m in int8.encoder.modules()
                    if isinstance(m, torch.nn.Linear))
    linears = sum(isinstance(m, torch.nn.Linear) for m in int8.encoder.modules())

    p_fp32, t_fp32 = timed(fp32, texts, args.batch_size)
    p_int8, t_int8 = timed(int8, texts, args.batch_size)
    p_again, t_again = timed(fp32, texts, args.batch_size)
    if not np.array_equal(p_fp32, p_again):
        print(f"note: fp32 not bit-identical across passes (max diff {np.abs(p_fp32 - p_again).max():.2e})")
    t_fp32 = min(t_fp32, t_again)

    targets = multi_hot(label_indices(notes["codes"].to_list(), fp32.codes), len(fp32.codes))
    threshold = fp32.threshold
    scores = {name: compute_metrics(p, targets, threshold) for name, p in (("fp32", p_fp32), ("int8", p_int8))}
    agree = agreement(p_fp32, p_int8, threshold)
    speed = {"fp32": len(texts) / t_fp32, "int8": len(texts) / t_int8}
    keep = agree[f"top{TOP_K}_agreement"] >= 0.99 and speed["int8"] > speed["fp32"]

    print(f"torch {torch.__version__}, torchao {version}, {args.threads} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{model}: {quantized}/{linears} encoder nn.Linear quantized (head fp32); "
          f"{len(texts)} notes of split '{args.split}' (seed 0), batch {args.batch_size}, "
          f"threshold {threshold:.3f}, scored: {scores['fp32']['documents']} notes x {scores['fp32']['codes']} codes")
    print()
    print(f"{'':<24}{'fp32':>10}{'int8':>10}")
    print(f"{'notes/s':<24}{speed['fp32']:>10.2f}{speed['int8']:>10.2f}")
    print(f"{'micro F1 @ threshold':<24}{scores['fp32']['f1_micro']:>10.4f}{scores['int8']['f1_micro']:>10.4f}")
    print(f"{'mAP':<24}{scores['fp32']['map']:>10.4f}{scores['int8']['map']:>10.4f}")
    print()
    for key, value in agree.items():
        print(f"{key:<28}{value:>10.4f}")
    print(f"{'int8 / fp32 speed':<28}{speed['int8'] / speed['fp32']:>10.3f}")
    print()
    print(f"verdict: {'keep' if keep else 'drop'} int8 (criterion: top-{TOP_K} agreement >= 0.99 and faster)")

    if args.out:
        args.out.write_text(json.dumps({
            "model": str(model), "data": str(data), "split": args.split, "notes": len(texts), "seed": 0,
            "batch_size": args.batch_size, "threads": args.threads, "torch": torch.__version__,
            "torchao": version, "quantized_linears": quantized, "encoder_linears": linears,
            "head_quantized": False, "threshold": threshold, "notes_per_second": speed,
            "seconds": {"fp32": t_fp32, "int8": t_int8}, "agreement": agree,
            "metrics": {name: {k: m[k] for k in ("f1_micro", "map", "documents", "codes")} for name, m in scores.items()},
            "keep": keep}, indent=2) + "\n")


if __name__ == "__main__":
    main()
