"""Time and peak memory of `clem-icd prepare mimic-iv`, next to a naive in-memory load.

Builds a MIMIC-IV-shaped fixture: the real demo code tables (../shared/data/mimic-iv-demo-2.2)
with their admissions replicated under new hadm_ids up to --admissions, and generated notes of
about --note-chars characters, then runs, each in its own process:
  - `clem-icd prepare mimic-iv` (streaming), and
  - a naive baseline that reads discharge.csv.gz whole with polars (what an in-memory pipeline
    must at least do),
and prints wall time and peak RSS of both and their ratio. Usage:

    python benchmarks/prepare_mimic_iv.py --admissions 20000 --note-chars 12000
    python benchmarks/prepare_mimic_iv.py --demo   # the test fixture: demo tables + planted cases

Needs ../shared/data/mimic-iv-demo-2.2 (and, with --demo, ../shared/data/splits/
mimiciv_icd10_split.feather) beside the repository, or CLEM_ICD_SHARED_DATA=FOLDER; without
them it stops with one line "error: needs ../shared/data/...: not found" and exit status 2.
"""

from __future__ import annotations

import argparse
import gzip
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
from _shared import SHARED_DATA, shared_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mimic_fixture import NOTE_COLUMNS, WORDS, build_mimic_iv, read_gz_csv, write_gz_csv  # noqa: E402

DEMO = SHARED_DATA / "mimic-iv-demo-2.2"


def build(root: Path, admissions: int, note_chars: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    hosp = root / "hosp"
    hosp.mkdir(parents=True)
    demo_diag = read_gz_csv(DEMO / "hosp" / "diagnoses_icd.csv.gz")
    demo_proc = read_gz_csv(DEMO / "hosp" / "procedures_icd.csv.gz")
    demo_ids = sorted({r["hadm_id"] for r in demo_diag})
    by_hadm = {h: ([], []) for h in demo_ids}
    for rows, k in ((demo_diag, 0), (demo_proc, 1)):
        for r in rows:
            by_hadm[r["hadm_id"]][k].append(r)
    diag, proc, notes, split_ids = [], [], [], []
    for i in range(admissions):
        hadm = str(30_000_000 + i)
        template_diag, template_proc = by_hadm[demo_ids[i % len(demo_ids)]]
        diag += [[r["subject_id"], hadm, r["seq_num"], r["icd_code"], r["icd_version"]] for r in template_diag]
        proc += [[r["subject_id"], hadm, r["seq_num"], r["chartdate"], r["icd_code"], r["icd_version"]] for r in template_proc]
        words, length = [], 0
        while length < note_chars:
            word = rng.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        notes.append([f"{i}-DS-1", i, hadm, "DS", 1, "", "", " ".join(words)])
        split_ids.append(int(hadm))
    write_gz_csv(hosp / "diagnoses_icd.csv.gz", ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"], diag)
    write_gz_csv(hosp / "procedures_icd.csv.gz", ["subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version"], proc)
    write_gz_csv(root / "note" / "discharge.csv.gz", NOTE_COLUMNS, notes)
    split_file = root / "split.feather"
    names = [("train", "val", "test")[rng.random() < 0.15 and 1 or (rng.random() < 0.2 and 2 or 0)] for _ in split_ids]
    feather.write_feather(pa.table({"_id": split_ids, "split": names}), split_file)
    return split_file


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:  # ru_maxrss of children is a maximum over all of them so far
        print("  (peak RSS not above an earlier child's; run each measurement in a fresh process)")
    return wall, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admissions", type=int, default=20_000)
    parser.add_argument("--note-chars", type=int, default=12_000)
    parser.add_argument("--demo", action="store_true", help="the test fixture instead of a scaled one")
    args = parser.parse_args()
    shared_path("mimic-iv-demo-2.2")
    if args.demo:
        shared_path("splits/mimiciv_icd10_split.feather")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.demo:
            build_mimic_iv(DEMO, root)
            split_file = SHARED_DATA / "splits" / "mimiciv_icd10_split.feather"
            args.admissions = len(read_gz_csv(DEMO / "hosp" / "admissions.csv.gz"))
        else:
            split_file = build(root, args.admissions, args.note_chars)
        notes = root / "note" / "discharge.csv.gz"
        with gzip.open(notes, "rb") as handle:
            raw_mb = sum(len(b) for b in iter(lambda: handle.read(1 << 24), b"")) / 1e6
        print(f"fixture: {args.admissions:,} admissions, notes {raw_mb:,.0f} MB uncompressed "
              f"({notes.stat().st_size / 1e6:,.0f} MB gzipped)")
        # Each measurement in its own child of a fresh interpreter, so peak RSS is its own.
        naive = [sys.executable, "-c", "import polars as pl, sys; pl.read_csv(sys.argv[1]); ", str(notes)]
        ours = [sys.executable, "-c", "from clem_icd.cli import main; main()", "--quiet", "prepare", "mimic-iv",
                "--mimic-iv", str(root), "--mimic-iv-note", str(root), "--split-file", str(split_file),
                "--out", str(root / "out"), "--overwrite"]
        runner = [sys.executable, __file__, "--child"]
        results = {}
        for name, command in (("naive polars read_csv (load only)", naive), ("clem-icd prepare mimic-iv", ours)):
            out = subprocess.run(runner + command, check=True, capture_output=True, text=True).stdout.split()
            results[name] = (float(out[0]), float(out[1]))
            print(f"{name:38s} wall {results[name][0]:7.1f} s   peak RSS {results[name][1]:8,.0f} MB")
        (nw, nm), (ow, om) = results.values()
        print(f"ratio clem-icd / naive: time {ow / nw:.2f}x, peak memory {om / nm:.2f}x; "
              f"clem-icd peak RSS / uncompressed notes = {om / raw_mb:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        wall, peak = measure(sys.argv[2:])
        print(wall, peak)
    else:
        main()
