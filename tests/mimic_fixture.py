"""A MIMIC-IV-shaped fixture: the real demo code tables (../shared/data/mimic-iv-demo-2.2) plus
note text generated here for their admissions, with the awkward cases the preparation must
handle. Also an independent reference of the Edin et al. 2023 rules in plain Python, used to
compute expected outputs without the code under test."""

from __future__ import annotations

import csv
import gzip
import random
from collections import defaultdict
from pathlib import Path

NOTE_COLUMNS = ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]
SECRET = "ZEBRA-PHI-7731"  # planted in every note; must never reach logs or errors
WORDS = ("chest pain dyspnea hypertension diabetes mellitus sepsis pneumonia renal failure atrial "
         "fibrillation anemia cough fever stent catheter insulin metformin heparin").split()


def read_gz_csv(path: Path) -> list[dict]:
    with gzip.open(path, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


def write_gz_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def note_text(rng: random.Random, hadm_id: str, words: int = 60) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return (f"Discharge summary {hadm_id}. {SECRET}\nHistory: \"{body}\", BP 120/80; "
            f"given 2 mg, señal café.\n\nPlan: follow-up in 3 weeks.")


def build_mimic_iv(demo: Path, root: Path, *, seed: int = 0) -> dict:
    """Write hosp/ and note/ under `root`; returns what the fixture planted."""
    rng = random.Random(seed)
    hosp = root / "hosp"
    hosp.mkdir(parents=True)
    for name in ("d_icd_diagnoses.csv.gz", "d_icd_procedures.csv.gz"):
        (hosp / name).symlink_to(demo / "hosp" / name)

    diag = read_gz_csv(demo / "hosp" / "diagnoses_icd.csv.gz")
    proc = read_gz_csv(demo / "hosp" / "procedures_icd.csv.gz")
    # Planted code-table cases: a row with a missing code, an exact duplicate row.
    icd10 = [r for r in diag if r["icd_version"] == "10"]
    diag.append({**icd10[0], "icd_code": "", "seq_num": "99"})
    diag.append(dict(icd10[5]))
    write_gz_csv(hosp / "diagnoses_icd.csv.gz", list(diag[0].keys()), [list(r.values()) for r in diag])
    write_gz_csv(hosp / "procedures_icd.csv.gz", list(proc[0].keys()), [list(r.values()) for r in proc])

    admissions = read_gz_csv(demo / "hosp" / "admissions.csv.gz")
    rows, planted = [], defaultdict(list)
    for i, adm in enumerate(admissions):
        hadm = adm["hadm_id"]
        text = note_text(rng, hadm)
        rows.append([f"{adm['subject_id']}-DS-{i}", adm["subject_id"], hadm, "DS", 1, "", "", text])
        if i % 40 == 0:  # exact duplicate note: dropped
            rows.append([f"{adm['subject_id']}-DS-{i}b", adm["subject_id"], hadm, "DS", 2, "", "", text])
            planted["duplicate_note"].append(hadm)
        if i % 55 == 1:  # a second, different note: joined into one document
            rows.append([f"{adm['subject_id']}-DS-{i}c", adm["subject_id"], hadm, "AD", 3, "", "",
                         f"Addendum {SECRET}: creatinine improved."])
            planted["second_note"].append(hadm)
    # A note whose admission has no codes at all, and a note with empty text.
    rows.append(["1-DS-1", "1", "29999999", "DS", 1, "", "", f"No codes here {SECRET}."])
    rows.append(["2-DS-1", admissions[3]["subject_id"], admissions[3]["hadm_id"], "DS", 4, "", "", ""])
    planted["note_without_codes"] = ["29999999"]
    write_gz_csv(root / "note" / "discharge.csv.gz", NOTE_COLUMNS, rows)
    return dict(planted)


# ---- independent reference of the benchmark rules -------------------------------------------

def ref_format(code: str, version: int, is_diag: bool) -> str:
    code = code.strip().upper().replace(".", "")
    if version == 10:
        return code[:3] + "." + code[3:] if is_diag and len(code) > 3 else code
    if is_diag:
        cut = 4 if code.startswith("E") else 3
        return code[:cut] + "." + code[cut:] if len(code) > cut else code
    return code[:2] + "." + code[2:] if len(code) > 2 else code


def reference_mimic_iv(root: Path, split_rows: dict[str, str], version: int, min_count: int,
                       separator: str = "\n\n") -> list[tuple[str, str, list[str], str]]:
    """(id, text, codes, split) in note-file order, by the rules of Edin et al. 2023."""
    codes = {}
    for name, is_diag in (("procedures_icd", False), ("diagnoses_icd", True)):
        per_hadm = defaultdict(set)
        for row in read_gz_csv(root / "hosp" / f"{name}.csv.gz"):
            if int(row["icd_version"]) == version and row["icd_code"].strip():
                per_hadm[row["hadm_id"]].add(ref_format(row["icd_code"], version, is_diag))
        codes[is_diag] = per_hadm
    notes, seen = defaultdict(list), set()
    for row in read_gz_csv(root / "note" / "discharge.csv.gz"):
        if row["text"].strip() and (row["hadm_id"], row["text"]) not in seen:
            seen.add((row["hadm_id"], row["text"]))
            notes[row["hadm_id"]].append(row["text"])
    joined = [h for h in notes if codes[False].get(h) or codes[True].get(h)]
    keep = {}
    for is_diag in (False, True):
        counts = defaultdict(int)
        for h in joined:
            for c in codes[is_diag].get(h, ()):
                counts[c] += 1
        keep[is_diag] = {c for c, n in counts.items() if n >= min_count}
    out = []
    for h in joined:
        target = (sorted(codes[False].get(h, set()) & keep[False])
                  + sorted(codes[True].get(h, set()) & keep[True]))
        if target and h in split_rows:
            out.append((h, separator.join(notes[h]), target, split_rows[h]))
    return out
