"""Peak memory of one training process's data: token ids as Python lists (what `train` kept
before the token cache) against the memory-mapped token cache, side by side in one session.

Writes a MIMIC-IV-sized prepared dataset (by default 89,099 train and 13,378 val notes of about
10,000 characters, the Edin et al. ICD-10 split; a few codes each) into a temporary folder,
builds the token cache (`clem-icd tokenize`), then measures in fresh child processes:

  baseline  imports, the tokenizer, the dataset's ids and codes (no tokens): what both pay
  lists     texts read, then tokenised into lists of ints in batches of 256 (the old CodedNotes)
  cache     CodedNotes over the token cache (the trainer's `coded_splits`), then one pass
            over every note as training reads them (each page of the cache is touched)

and prints peak RSS, the data's share (peak minus baseline) and bytes per token. The lists run
can be limited to a fraction of the notes (--lists-fraction) on a machine with less memory: its
cost is linear in tokens, and the table says what was measured. Usage:

    python benchmarks/train_data_memory.py                       # MIMIC-IV size
    python benchmarks/train_data_memory.py --train-notes 2000 --val-notes 300 --note-chars 3000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
WORDS = ("patient admitted with chest pain shortness of breath history of hypertension diabetes mellitus "
         "type two chronic kidney disease stage three atrial fibrillation on anticoagulation was started "
         "on intravenous antibiotics for community acquired pneumonia blood cultures negative discharged "
         "home in stable condition follow up with primary care physician in one week creatinine 1.4 "
         "hemoglobin 9.8 echocardiogram showed ejection fraction of 35 percent").split()
CODES = ["I10", "E11.9", "J18.9", "N17.9", "I50.9", "E78.5", "I48.91", "N18.30", "D64.9", "Z79.01"]


def write_dataset(folder: Path, train: int, val: int, note_chars: int, seed: int = 0) -> None:
    """documents.parquet, codes.tsv and manifest.json, as `clem-icd prepare` writes them; the
    texts are cut from one long random word sequence (fast at any size)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    words = np.array(WORDS)[rng.integers(0, len(WORDS), size=max(note_chars, 1) * 2)]
    pool = " ".join(words.tolist())
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("codes", pa.list_(pa.string())),
                        ("split", pa.string())])
    with pq.ParquetWriter(folder / "documents.parquet", schema, compression="zstd") as writer:
        n = train + val
        for start in range(0, n, 2000):
            rows = range(start, min(n, start + 2000))
            lengths = rng.integers(note_chars // 2, note_chars * 3 // 2, size=len(rows))
            offsets = rng.integers(0, len(pool) - note_chars * 3 // 2, size=len(rows))
            writer.write_table(pa.table({
                "id": [f"n{i}" for i in rows],
                "text": [pool[o:o + k] for o, k in zip(offsets.tolist(), lengths.tolist())],
                "codes": [sorted(set(rng.choice(CODES, size=3).tolist())) for _ in rows],
                "split": ["train" if i < train else "val" for i in rows]}, schema=schema))
    (folder / "codes.tsv").write_text("code\tsystem\tdescription\ttrain_count\n"
                                      + "".join(f"{c}\ticd10cm\t{c}\t1\n" for c in CODES))
    (folder / "manifest.json").write_text(json.dumps({"source": "benchmark", "options": {}}))


def child(mode: str, data: str, tokenizer_path: str, max_length: int, fraction: float) -> None:
    """One measurement, in its own interpreter: prints JSON with tokens and seconds."""
    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.model.coder import load_tokenizer, tokenize_texts
    from clem_icd.training.trainer import coded_splits

    tokenizer = load_tokenizer(tokenizer_path)
    started = time.perf_counter()
    tokens = 0
    if mode == "baseline":
        dataset = PreparedDataset.load(data, text=False)
        _ids = [dataset.split(s)["id"].to_list() for s in ("train", "val")]  # held, as the others hold theirs
    elif mode == "lists":
        dataset = PreparedDataset.load(data)  # the texts, as training read them before
        kept = []
        for split in ("train", "val"):
            texts = dataset.split(split)["text"].to_list()
            texts = texts[:int(len(texts) * fraction)]
            token_lists: list[list[int]] = []
            for start in range(0, len(texts), 256):
                token_lists += tokenize_texts(tokenizer, texts[start:start + 256], max_length)
            tokens += sum(map(len, token_lists))
            kept.append(token_lists)
    else:
        dataset = PreparedDataset.load(data, text=False)
        splits = coded_splits(dataset, dataset.code_list, tokenizer, max_length)
        for split in splits:  # read every note as batches do: its mapped pages count in the RSS
            for i in range(len(split)):
                tokens += len(split[i][1])
    print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - started,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(mode: str, data: Path, tokenizer: str, max_length: int, fraction: float = 1.0) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", mode, str(data), tokenizer, str(max_length),
                             str(fraction)], capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"error: the {mode} measurement failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-notes", type=int, default=89_099)
    parser.add_argument("--val-notes", type=int, default=13_378)
    parser.add_argument("--note-chars", type=int, default=10_000)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--lists-fraction", type=float, default=1.0,
                        help="share of the notes the lists run tokenises (its memory is linear in tokens)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    from model_fixtures import minilm_path

    tokenizer = str(minilm_path())
    workdir = Path(tempfile.mkdtemp(prefix="clem-memory-"))
    try:
        data = workdir / "data"
        started = time.perf_counter()
        write_dataset(data, args.train_notes, args.val_notes, args.note_chars)
        print(f"dataset: {args.train_notes:,} train + {args.val_notes:,} val notes of ~{args.note_chars:,} characters "
              f"({time.perf_counter() - started:.0f} s to write)")
        command = [sys.executable, "-m", "clem_icd.cli", "--quiet", "tokenize", "--data", str(data), "--splits",
                   "train,val", f"model.encoder={tokenizer}", f"model.max_length={args.max_length}"]
        if args.workers:
            command += ["--workers", str(args.workers)]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        cache_mb = sum(p.stat().st_size for p in (data / "token-cache").rglob("*") if p.is_file()) / 1e6
        print(f"token cache: {cache_mb:,.0f} MB, built in {time.perf_counter() - started:.0f} s")

        base = measure("baseline", data, tokenizer, args.max_length)
        rows = [("baseline (imports, tokenizer, ids, codes)", base, 1.0),
                ("lists: tokenised into Python lists", measure("lists", data, tokenizer, args.max_length,
                                                                args.lists_fraction), args.lists_fraction),
                ("cache: memory-mapped token cache", measure("cache", data, tokenizer, args.max_length), 1.0)]
        print(f"\n{'':44s} {'notes':>7s} {'tokens':>13s} {'peak RSS MB':>12s} {'data MB':>9s} {'B/token':>8s} "
              f"{'seconds':>8s}")
        for name, r, fraction in rows:
            data_mb = r["peak_mb"] - base["peak_mb"]
            per_token = data_mb * 1e6 / r["tokens"] if r["tokens"] else float("nan")
            notes = f"{fraction:.0%}"
            print(f"{name:44s} {notes:>7s} {r['tokens']:>13,} {r['peak_mb']:>12,.0f} {data_mb:>9,.0f} "
                  f"{per_token:>8.1f} {r['seconds']:>8.1f}")
        lists, cache = rows[1][1], rows[2][1]
        full_lists = (lists["peak_mb"] - base["peak_mb"]) / args.lists_fraction
        print(f"\ndata memory, lists / cache: {full_lists / max(cache['peak_mb'] - base['peak_mb'], 1):.1f}x"
              + (f" (lists scaled from {args.lists_fraction:.0%} of the notes)" if args.lists_fraction < 1 else ""))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
    else:
        main()
