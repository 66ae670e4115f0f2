"""Notes per second of `predict`, without and with each explanation method, side by side in one
process on the same notes (this machine is noisy: compare the ratios, not absolute times).

A trained model on real notes (the issue's measurement, 2 CPU cores; needs the CodiEsp notes of
../shared/data beside the repository - a missing --notes path stops with one line
"error: needs PATH: not found" and exit status 2):
    python benchmarks/predict_speed.py --model runs/codiesp/minilm_cross_desc \
        --notes ../shared/data/codiesp/dev/text_files_en
A randomly initialised ModernBERT-base coder with the MIMIC-IV label count on generated
8,192-token notes (the GPU check; needs only a tokenizer folder):
    python benchmarks/predict_speed.py --random-modernbert-base --tokenizer TOKENIZER_DIR \
        --codes 7942 --max-length 8192 --generated 32 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _shared import require

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clem_icd.inference import NotePredictor, PredictOptions  # noqa: E402
from clem_icd.inference.inputs import read_notes  # noqa: E402
from clem_icd.model import ICDCoder  # noqa: E402

MODERNBERT_BASE = dict(model_type="modernbert", hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                       intermediate_size=1152, max_position_embeddings=8192, global_attn_every_n_layers=3,
                       local_attention=128, vocab_size=30522, pad_token_id=0, cls_token_id=101,
                       sep_token_id=102, bos_token_id=101, eos_token_id=102)


def generated_notes(tokenizer, count: int, tokens: int, seed: int = 0) -> list[str]:
    """Notes of about `tokens` tokens made of whole words from the tokenizer's vocabulary."""
    rng = np.random.default_rng(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 3]
    return [" ".join(rng.choice(words, size=int(tokens * 0.9))) for _ in range(count)]


def build(args) -> tuple[ICDCoder, list[str]]:
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model:
        coder = ICDCoder.from_pretrained(args.model, device=device)
    else:
        torch.manual_seed(0)
        coder = ICDCoder.from_encoder(args.tokenizer, [f"C{i:04d}" for i in range(args.codes)],
                                      encoder_config=MODERNBERT_BASE, max_length=args.max_length,
                                      chunk_size=args.max_length, attention_dim=512,
                                      attn_implementation=args.attn_implementation)
        coder = coder.to(device).eval()
    if args.notes:
        texts = [r.text for r in read_notes([args.notes]) if r.error is None][: args.limit]
    else:
        texts = generated_notes(coder.tokenizer, args.generated, args.max_length)
    return coder, texts


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="trained model folder")
    parser.add_argument("--notes", help="notes to code: folder of text files, JSONL, CSV, Parquet (e.g. "
                        "../shared/data/codiesp/dev/text_files_en)")
    parser.add_argument("--limit", type=int, default=None, help="code at most this many notes")
    parser.add_argument("--random-modernbert-base", action="store_true")
    parser.add_argument("--tokenizer", help="tokenizer folder for the random encoder")
    parser.add_argument("--codes", type=int, default=7942)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--generated", type=int, default=32, help="generated notes (random encoder)")
    parser.add_argument("--attn-implementation", default="sdpa")
    parser.add_argument("--methods", default="none,attention,attingrad,inputxgrad")
    parser.add_argument("--top-k", type=int, default=None, help="explain at most K codes per note (a random "
                        "model predicts about half of all codes; MIMIC-IV notes have ~15)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not args.model and not args.random_modernbert_base:
        parser.error("give --model or --random-modernbert-base")
    if args.notes:
        require(args.notes)

    coder, texts = build(args)
    device = coder.device
    tokens = sum(len(ids) for ids in coder.tokenize(texts))
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else f'cpu x {torch.get_num_threads()} threads'}; "
          f"{len(texts)} notes, {tokens} tokens after truncation at {coder.config.max_length}; "
          f"{len(coder.codes)} codes; batch {args.batch_size}; precision {args.precision}")
    warm = NotePredictor(coder, PredictOptions(batch_size=args.batch_size, precision=args.precision,
                                               explain="attingrad", top_k=2))
    warm.predict(texts[: args.batch_size])  # kernels, allocator, thread pools
    results = []
    for method in args.methods.split(","):
        options = PredictOptions(batch_size=args.batch_size, precision=args.precision, top_k=args.top_k,
                                 explain=None if method == "none" else method)
        predictor = NotePredictor(coder, options)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        output = predictor.predict(texts)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        codes = sum(len(r["codes"]) for r in output)
        results.append({"method": method, "seconds": seconds, "notes_per_second": len(texts) / seconds,
                        "codes_per_note": codes / len(texts), "peak_memory_mb": peak_memory_mb(device)})
        print(f"  {method}: {seconds:.1f} s", flush=True)
    base = results[0]["seconds"]
    peak = "peak MB" if device.type == "cuda" else "RSS MB"  # on CPU: the process's peak so far
    print(f"{'method':<12}{'notes/s':>10}{'x time':>9}{'codes/note':>12}{peak:>10}")
    for r in results:
        print(f"{r['method']:<12}{r['notes_per_second']:>10.2f}{r['seconds'] / base:>9.2f}"
              f"{r['codes_per_note']:>12.1f}{r['peak_memory_mb']:>10.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"notes": len(texts), "tokens": tokens, "results": results}, indent=2))


if __name__ == "__main__":
    main()
