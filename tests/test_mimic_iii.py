"""MIMIC-III full and 50 (ICD-9) on a MIMIC-III-layout fixture built from the demo's real ICD-9
codes, against an independent reference of the rules (discharge summaries and addenda joined
with a space, no frequency filter for full, the Mullenbach 50 codes for 50)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from mimic_fixture import SECRET, read_gz_csv, ref_format, write_gz_csv

NOTE_HEADER = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY",
               "DESCRIPTION", "CGID", "ISERROR", "TEXT"]
# Six of the Mullenbach top-50 codes, planted so the 50 subset is not empty.
PLANTED_TOP50 = [("4019", True), ("42731", True), ("3893", False), ("9604", False), ("V5861", True), ("486", True)]


@pytest.fixture(scope="module")
def mimic3(mimic_iv_demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("mimiciii")
    diag9 = [r for r in read_gz_csv(mimic_iv_demo / "hosp" / "diagnoses_icd.csv.gz") if r["icd_version"] == "9"]
    proc9 = [r for r in read_gz_csv(mimic_iv_demo / "hosp" / "procedures_icd.csv.gz") if r["icd_version"] == "9"]
    hadms = sorted({r["hadm_id"] for r in diag9})
    diag_rows = [[i, r["subject_id"], r["hadm_id"], r["seq_num"], r["icd_code"]] for i, r in enumerate(diag9)]
    proc_rows = [[i, r["subject_id"], r["hadm_id"], r["seq_num"], r["icd_code"]] for i, r in enumerate(proc9)]
    for k, (code, is_diag) in enumerate(PLANTED_TOP50):
        for hadm in hadms[k::4]:
            (diag_rows if is_diag else proc_rows).append([0, 1, hadm, 50, code])
    diag_rows.append([0, 1, hadms[0], 51, ""])  # missing code
    header = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"]
    write_gz_csv(root / "DIAGNOSES_ICD.csv.gz", header, diag_rows)
    write_gz_csv(root / "PROCEDURES_ICD.csv.gz", header, proc_rows)

    notes = []
    for i, hadm in enumerate(hadms + ["29999999"]):
        notes.append([len(notes), 1, hadm, "", "", "", "Discharge summary", "Report", "", "", f"Report {hadm} {SECRET}\nBP 120/80."])
        notes.append([len(notes), 1, hadm, "", "", "", "Nursing", "Nursing note", "", "", f"Nursing {SECRET}"])
        if i % 7 == 0:
            notes.append([len(notes), 1, hadm, "", "", "", "Discharge summary", "Addendum", "", "", f"Addendum {i}, \"quoted\"."])
            notes.append([len(notes), 1, hadm, "", "", "", "Discharge summary", "Addendum", "", "", f"Addendum {i}, \"quoted\"."])
    notes.append([len(notes), 1, "", "", "", "", "Radiology", "CT", "", "", "no admission"])
    write_gz_csv(root / "NOTEEVENTS.csv.gz", NOTE_HEADER, notes)

    split_file = root / "splits.feather"
    ids = hadms[:-3]  # three admissions left out of the split file
    feather.write_feather(pa.table({"_id": [int(h) for h in ids], "split": [("train", "val", "test")[i % 3] for i in range(len(ids))]}), split_file)
    return root, split_file


def reference(root: Path, split_file: Path, keep: set[str] | None) -> dict:
    table = feather.read_table(split_file).to_pydict()
    splits = {str(i): s for i, s in zip(table["_id"], table["split"])}
    codes = {}
    for name, is_diag in (("PROCEDURES_ICD", False), ("DIAGNOSES_ICD", True)):
        per = defaultdict(set)
        for row in read_gz_csv(root / f"{name}.csv.gz"):
            if row["ICD9_CODE"].strip():
                per[row["HADM_ID"]].add(ref_format(row["ICD9_CODE"], 9, is_diag))
        codes[is_diag] = per
    texts = defaultdict(list)
    for row in read_gz_csv(root / "NOTEEVENTS.csv.gz"):
        if row["CATEGORY"] == "Discharge summary":
            texts[row["HADM_ID"]].append(row["TEXT"])
    out = {}
    for hadm, parts in texts.items():
        target = [c for c in sorted(codes[False][hadm]) + sorted(codes[True][hadm]) if keep is None or c in keep]
        if target and hadm in splits:
            out[hadm] = (" ".join(parts), target, splits[hadm])
    return out


@pytest.mark.parametrize("subset", ["full", "50"])
def test_mimic_iii_matches_reference(mimic3, tmp_path, cli, subset):
    from clem_icd.data.mimic import MIMIC_III_TOP_50

    root, split_file = mimic3
    out = tmp_path / subset
    result = cli("prepare", "mimic-iii", "--mimic-iii", root, "--split-file", split_file, "--out", out, "--subset", subset)
    assert result.returncode == 0, result.stderr
    docs = pl.read_parquet(out / "documents.parquet")
    got = {r["id"]: (r["text"], r["codes"], r["split"]) for r in docs.iter_rows(named=True)}
    want = reference(root, split_file, set(MIMIC_III_TOP_50) if subset == "50" else None)
    assert got == want
    if subset == "50":
        codes = pl.read_csv(out / "codes.tsv", separator="\t", infer_schema_length=0)
        planted = {ref_format(c, 9, d) for c, d in PLANTED_TOP50}
        assert planted <= set(codes["code"]) <= MIMIC_III_TOP_50
    assert SECRET not in result.stderr + result.stdout


def test_mullenbach_top50_codes_are_well_formed():
    from clem_icd.codes import CodeSystem, normalize_code
    from clem_icd.data.mimic import MIMIC_III_TOP_50

    assert len(MIMIC_III_TOP_50) == 50
    for code in MIMIC_III_TOP_50:
        system = CodeSystem.ICD9PCS if len(code.split(".")[0]) == 2 else CodeSystem.ICD9CM
        assert normalize_code(code, system) == code
