"""Peak memory of the label-wise attention heads at MIMIC-IV scale (issue 9, item 3).

Random weights, hidden size 768 (ModernBERT-base), attention_dim 512, 7,942 codes, 8,192
tokens, float32 on the CPU. For each head (laat, cross), mode and batch size:
- train: forward + backward of the BCE loss (gradients to the token states and every head
  parameter, as when the encoder is fine-tuned), attention weights not asked for;
- infer: forward under no_grad, attention weights not asked for;
- infer+w: forward under no_grad with the (batch, labels, tokens) attention weights returned,
  as the `attention` / `attingrad` evidence methods ask;
- train+w (only with --modes): train, the weights returned too, as the head's default
  need_weights=True does for a caller that does not pass need_weights=False.
`--before` adds the same rows for the implementation before issue 9 (every label at once,
autograd keeping the (batch, labels, tokens) scores, softmax and their copies), recreated here
so that both can be measured side by side; it always computed the weights, so its infer and
infer+w rows measure the same computation.

How memory is measured: every configuration runs in a fresh Python process; after building
the head and its inputs and one warm-up step at 64 tokens (so that kernels, thread pools and
the allocator's first arenas are already counted), the process's peak resident set size
(getrusage ru_maxrss) is the baseline; the reported number is the peak after the step minus
that baseline: what the step added at its worst moment (transient buffers, everything autograd
kept, gradients of the head parameters). For reference, `one BLT` is the size of one
(batch, labels, tokens) float32 tensor.

usage: python benchmarks/head_memory.py [--before] [--bf16] [--heads laat cross]
                                        [--modes train infer infer+w] [--batches 1 2]
                                        [--labels 7942] [--tokens 8192]
About 2 minutes on 2 CPUs, 5 with --before; --bf16 is for CPUs with native bf16 (on AVX2 a
bf16 step is ~30x slower: use --tokens 2048 there).
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import subprocess
import sys
import time

MODES = ("train", "infer", "infer+w", "train+w")
DEFAULT_MODES = MODES[:3]


def _old_masked_softmax(scores, mask):
    import torch

    scores = scores.float().masked_fill(~mask[:, None, :], float("-inf"))
    scores = scores - scores.amax(dim=-1, keepdim=True)
    return torch.softmax(scores, dim=-1)


def _old_attention(head, hidden, mask):
    import math

    import torch

    if hasattr(head, "first"):  # laat
        z = torch.tanh(head.first(hidden))
        return _old_masked_softmax(head.second(z).transpose(1, 2), mask)
    keys = head.key(hidden)
    scores = torch.einsum("ld,btd->blt", head.queries.to(keys.dtype), keys)
    return _old_masked_softmax(scores / math.sqrt(keys.shape[-1]), mask)


def _old_forward(head, hidden, mask):
    """The heads' forward before issue 9 (same statements): all labels at once, weights always."""
    import torch

    weights = _old_attention(head, hidden, mask)
    if hasattr(head, "first"):
        states = torch.bmm(weights.to(hidden.dtype), hidden)
    else:
        states = head.norm(torch.bmm(weights.to(hidden.dtype), head.value(hidden)))
    logits = (states * head.output_weight).sum(-1) + head.output_bias
    return logits.float(), weights


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measure(head_kind: str, mode: str, batch: int, impl: str, labels: int, tokens: int,
            hidden_size: int, dim: int, bf16: bool) -> dict:
    """One configuration, in this process: peak MB added by the step, and its seconds."""
    import gc

    import torch
    import torch.nn.functional as F

    from clem_icd.model.heads import HEADS

    torch.manual_seed(0)
    head = HEADS[head_kind](hidden_size, labels, dim)
    new_api = "need_weights" in inspect.signature(head.forward).parameters
    need = mode.endswith("+w")

    def run(length: int) -> None:
        hidden = torch.randn(batch, length, hidden_size, requires_grad=mode.startswith("train"))
        mask = torch.ones(batch, length, dtype=torch.bool)
        mask[-1, length * 3 // 4:] = False  # some padding, as in a batch of notes
        targets = (torch.rand(batch, labels) < 0.002).float()
        gc.collect()
        start_mb, start = _peak_mb(), time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(mode.startswith("train")):
            if impl == "before":
                logits, _ = _old_forward(head, hidden, mask)
            elif new_api:
                logits, _ = head(hidden, mask, need_weights=need)
            else:
                logits, _ = head(hidden, mask)
            if mode.startswith("train"):
                F.binary_cross_entropy_with_logits(logits, targets).backward()
        return start_mb, time.perf_counter() - start

    run(64)  # warm-up
    head.zero_grad(set_to_none=True)
    base, seconds = run(tokens)
    return {"peak_mb": _peak_mb() - base, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", action="store_true", help="also measure the implementation before issue 9")
    parser.add_argument("--bf16", action="store_true", help="also under bf16 autocast (slow without native bf16)")
    parser.add_argument("--heads", nargs="+", default=["laat", "cross"])
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--labels", type=int, default=7942)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--attention-dim", type=int, default=512)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single configuration, as JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return

    impls = ["before", "after"] if args.before else ["after"]
    precisions = [False, True] if args.bf16 else [False]
    print(f"labels {args.labels}, tokens {args.tokens}, hidden {args.hidden_size}, "
          f"attention_dim {args.attention_dim}; peak MB added by one step (fresh process each)")
    print(f"{'head':<6} {'dtype':<5} {'mode':<8} {'batch':>5} {'one BLT':>8} "
          + " ".join(f"{impl + ' MB':>10} {impl + ' s':>8}" for impl in impls))
    for head in args.heads:
        for bf16 in precisions:
            for mode in args.modes:
                for batch in args.batches:
                    blt = batch * args.labels * args.tokens * 4 / 2**20
                    cells = []
                    for impl in impls:
                        config = dict(head_kind=head, mode=mode, batch=batch, impl=impl, labels=args.labels,
                                      tokens=args.tokens, hidden_size=args.hidden_size,
                                      dim=args.attention_dim, bf16=bf16)
                        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)],
                                             capture_output=True, text=True)
                        if out.returncode:
                            cells.append(f"{'failed':>10} {'':>8}")
                            print(out.stderr[-2000:], file=sys.stderr)
                            continue
                        result = json.loads(out.stdout.splitlines()[-1])
                        cells.append(f"{result['peak_mb']:>10.0f} {result['seconds']:>8.1f}")
                    print(f"{head:<6} {'bf16' if bf16 else 'fp32':<5} {mode:<8} {batch:>5} {blt:>8.0f} "
                          + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
