"""MIMIC-IV preparation on the real demo tables with generated notes, against an independent
reference of the Edin et al. 2023 rules (tests/mimic_fixture.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from mimic_fixture import SECRET, build_mimic_iv, reference_mimic_iv, write_gz_csv


@pytest.fixture(scope="module")
def fixture_root(mimic_iv_demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("mimiciv")
    planted = build_mimic_iv(mimic_iv_demo, root)
    return root, planted


def split_map(path: Path) -> dict[str, str]:
    table = feather.read_table(path).to_pydict()
    return {str(i): s for i, s in zip(table["_id"], table["split"])}


def load_output(out: Path):
    docs = pl.read_parquet(out / "documents.parquet")
    codes = pl.read_csv(out / "codes.tsv", separator="\t", infer_schema_length=0)
    manifest = json.loads((out / "manifest.json").read_text())
    return docs, codes, manifest


def assert_matches_reference(docs: pl.DataFrame, expected: list) -> None:
    got = {r["id"]: (r["text"], r["codes"], r["split"]) for r in docs.iter_rows(named=True)}
    want = {h: (t, c, s) for h, t, c, s in expected}
    assert set(got) == set(want)
    for hadm, value in want.items():
        assert got[hadm] == value, hadm


@pytest.mark.parametrize("min_count", [1, 3, 10])
def test_icd10_matches_reference(fixture_root, splits_dir, tmp_path, cli, min_count):
    root, planted = fixture_root
    split_file = splits_dir / "mimiciv_icd10_split.feather"
    out = tmp_path / "out"
    result = cli("prepare", "mimic-iv", "--mimic-iv", root, "--mimic-iv-note", root,
                 "--split-file", split_file, "--out", out, "--min-count", min_count)
    assert result.returncode == 0, result.stderr
    docs, codes, manifest = load_output(out)
    expected = reference_mimic_iv(root, split_map(split_file), 10, min_count)
    assert_matches_reference(docs, expected)
    assert docs.schema == {"id": pl.String, "text": pl.String, "codes": pl.List(pl.String), "split": pl.String}

    # codes.tsv: exactly the codes present, with systems, descriptions and train counts.
    present = {c for _, _, cs, _ in expected for c in cs}
    assert set(codes["code"]) == present
    train_counts = {c: sum(c in cs for _, _, cs, s in expected if s == "train") for c in present}
    assert dict(zip(codes["code"], map(int, codes["train_count"]))) == train_counts
    systems = dict(zip(codes["code"], codes["system"]))
    assert all(systems[c] == ("icd10cm" if "." in c or len(c) == 3 else "icd10pcs") for c in present)
    assert all(codes["description"].str.len_chars() > 0)  # CM from the package or the demo table

    counts = manifest["counts"]
    assert counts["documents"] == len(expected)
    assert counts["by_split"] == {s: sum(e[3] == s for e in expected) for s in ("train", "val", "test")}
    assert counts["duplicate_notes"] == len(planted["duplicate_note"])
    assert counts["notes_missing_text"] == 1
    assert counts["admissions_with_multiple_notes"] >= 1
    assert counts["code_tables"]["icd10cm"]["rows_missing_code"] == 1
    assert [i["sha256"] for i in manifest["inputs"]] and len(manifest["inputs"]) == 4
    assert SECRET not in result.stderr + result.stdout


def test_demo_counts_without_filter(fixture_root, splits_dir, tmp_path, cli):
    """Facts of the real demo: 123 admissions have ICD-10 codes, 104 of them are in the split file,
    and the demo has 734 distinct ICD-10-CM codes, 5 of them retired (described by d_icd_diagnoses)."""
    root, _ = fixture_root
    out = tmp_path / "out"
    result = cli("prepare", "mimic-iv", "--mimic-iv", root, "--mimic-iv-note", root, "--split-file",
                 splits_dir / "mimiciv_icd10_split.feather", "--out", out, "--min-count", "1")
    assert result.returncode == 0, result.stderr
    _, codes, manifest = load_output(out)
    assert manifest["counts"]["joined_admissions"] == 123
    assert manifest["counts"]["documents"] == 104
    assert manifest["counts"]["admissions_not_in_split_file"] == 19
    assert manifest["counts"]["codes_before_filter"]["icd10cm"] == 734
    assert manifest["code_check"]["unknown_codes"] == 0
    import simple_icd_10_cm as cm
    retired = [c for c in codes.filter(pl.col("system") == "icd10cm")["code"] if not cm.is_valid_item(c)]
    assert "T81.4XXA" in retired or len(retired) > 0
    assert all(codes.filter(pl.col("code").is_in(retired))["description"].str.len_chars() > 0)


def test_icd9_matches_reference(fixture_root, splits_dir, tmp_path, cli):
    root, _ = fixture_root
    split_file = splits_dir / "mimiciv_icd9_split.feather"
    out = tmp_path / "out9"
    result = cli("prepare", "mimic-iv", "--mimic-iv", root, "--mimic-iv-note", root, "--split-file",
                 split_file, "--out", out, "--icd-version", "9", "--min-count", "2")
    if result.returncode != 0 and "matches no admission" in result.stderr:
        pytest.skip("no demo ICD-9 admission is in the published ICD-9 split")
    assert result.returncode == 0, result.stderr
    docs, codes, _ = load_output(out)
    assert_matches_reference(docs, reference_mimic_iv(root, split_map(split_file), 9, 2))
    assert set(codes["system"]) <= {"icd9cm", "icd9pcs"}
    assert all(re.fullmatch(r"\d{2}(\.\d{1,2})?", c) for c in codes.filter(pl.col("system") == "icd9pcs")["code"])


def test_clean_text_option(fixture_root, splits_dir, tmp_path, cli):
    root, _ = fixture_root
    split_file = splits_dir / "mimiciv_icd10_split.feather"
    raw, clean = tmp_path / "raw", tmp_path / "clean"
    for out, extra in ((raw, []), (clean, ["--clean-text"])):
        result = cli("prepare", "mimic-iv", "--mimic-iv", root, "--mimic-iv-note", root, "--split-file",
                     split_file, "--out", out, "--min-count", "1", *extra)
        assert result.returncode == 0, result.stderr
    raw_docs, clean_docs = pl.read_parquet(raw / "documents.parquet"), pl.read_parquet(clean / "documents.parquet")
    assert raw_docs["id"].to_list() == clean_docs["id"].to_list()
    for text, cleaned in zip(raw_docs["text"], clean_docs["text"]):
        assert cleaned == reference_clean(text)
    assert json.loads((clean / "manifest.json").read_text())["options"]["clean_text"] is True


def reference_clean(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9]+", " ", text.lower())
    text = re.sub(r"(\s\d+)+\s", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def test_split_file_with_custom_assignment(fixture_root, tmp_path, cli):
    """A split file of our own: ids absent from it are dropped and counted; the rest follow it."""
    root, _ = fixture_root
    expected_all = reference_mimic_iv(root, {}, 10, 1)  # nothing passes without a split
    assert expected_all == []
    ids = sorted({r[0] for r in reference_mimic_iv(root, _all_ids(root), 10, 1)})
    assignment = {h: ("train", "val", "test")[i % 3] for i, h in enumerate(ids[:-5])}
    split_file = tmp_path / "split.feather"
    feather.write_feather(pa.table({"_id": [int(h) for h in assignment], "split": list(assignment.values())}), split_file)
    out = tmp_path / "out"
    result = cli("prepare", "mimic-iv", "--mimic-iv", root, "--mimic-iv-note", root,
                 "--split-file", split_file, "--out", out, "--min-count", "1")
    assert result.returncode == 0, result.stderr
    docs, _, manifest = load_output(out)
    assert_matches_reference(docs, reference_mimic_iv(root, assignment, 10, 1))
    assert manifest["counts"]["admissions_not_in_split_file"] == 5


def _all_ids(root: Path) -> dict[str, str]:
    from mimic_fixture import read_gz_csv
    return {r["hadm_id"]: "train" for r in read_gz_csv(root / "note" / "discharge.csv.gz")}


# ---- bad input: one line naming file/row, non-zero exit, nothing written, no note text -------

def _run(cli, root, split_file, out, *extra):
    return cli("prepare", "mimic-iv", "--mimic-iv", root, "--mimic-iv-note", root,
               "--split-file", split_file, "--out", out, *extra)


def _assert_clean_failure(result, out: Path, *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture
def broken(fixture_root, tmp_path):
    """A private copy of the fixture to break."""
    import shutil
    root, _ = fixture_root
    copy = tmp_path / "broken"
    shutil.copytree(root, copy, symlinks=True)
    return copy


def test_missing_note_file(broken, splits_dir, tmp_path, cli):
    (broken / "note" / "discharge.csv.gz").unlink()
    out = tmp_path / "out"
    _assert_clean_failure(_run(cli, broken, splits_dir / "mimiciv_icd10_split.feather", out),
                          out, "discharge.csv.gz", "not found")


def test_missing_column(broken, splits_dir, tmp_path, cli):
    write_gz_csv(broken / "hosp" / "diagnoses_icd.csv.gz", ["subject_id", "hadm_id", "seq_num", "icd_version"], [[1, 2, 3, 10]])
    out = tmp_path / "out"
    _assert_clean_failure(_run(cli, broken, splits_dir / "mimiciv_icd10_split.feather", out),
                          out, "diagnoses_icd.csv.gz", "icd_code")


def test_unparseable_code_names_row(broken, splits_dir, tmp_path, cli):
    write_gz_csv(broken / "hosp" / "diagnoses_icd.csv.gz", ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
                 [[1, 20093566, 1, "I10", 10], [1, 20093566, 2, "I1#0", 10]])
    out = tmp_path / "out"
    _assert_clean_failure(_run(cli, broken, splits_dir / "mimiciv_icd10_split.feather", out),
                          out, "diagnoses_icd.csv.gz", "row 2", "icd_code")


def test_non_integer_hadm_id(broken, splits_dir, tmp_path, cli):
    write_gz_csv(broken / "hosp" / "procedures_icd.csv.gz", ["subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version"],
                 [[1, 20093566, 1, "", "02HV33Z", 10], [1, "x12", 1, "", "02HV33Z", 10]])
    out = tmp_path / "out"
    _assert_clean_failure(_run(cli, broken, splits_dir / "mimiciv_icd10_split.feather", out),
                          out, "procedures_icd.csv.gz", "row 2", "hadm_id")


def test_non_utf8_note_names_record(broken, splits_dir, tmp_path, cli):
    import gzip

    from mimic_fixture import NOTE_COLUMNS
    body = ",".join(NOTE_COLUMNS).encode() + b"\n"
    body += b'1-DS-1,1,20093566,DS,1,,,"fine ' + SECRET.encode() + b'"\n'
    body += b'1-DS-2,1,20199380,DS,1,,,"caf\xe9 ' + SECRET.encode() + b'"\n'
    (broken / "note" / "discharge.csv.gz").write_bytes(gzip.compress(body))
    out = tmp_path / "out"
    _assert_clean_failure(_run(cli, broken, splits_dir / "mimiciv_icd10_split.feather", out),
                          out, "discharge.csv.gz", "row 2", "UTF-8")


def test_split_file_unknown_split_name(fixture_root, tmp_path, cli):
    root, _ = fixture_root
    split_file = tmp_path / "split.feather"
    feather.write_feather(pa.table({"_id": [20093566, 20199380], "split": ["train", "holdout"]}), split_file)
    out = tmp_path / "out"
    _assert_clean_failure(_run(cli, root, split_file, out), out, "split.feather", "row 2", "split")


def test_split_file_matching_nothing(fixture_root, tmp_path, cli):
    root, _ = fixture_root
    split_file = tmp_path / "split.feather"
    feather.write_feather(pa.table({"_id": [1, 2], "split": ["train", "test"]}), split_file)
    out = tmp_path / "out"
    _assert_clean_failure(_run(cli, root, split_file, out), out, "split.feather", "matches no admission")


def test_existing_output_is_kept(fixture_root, splits_dir, tmp_path, cli):
    root, _ = fixture_root
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _run(cli, root, splits_dir / "mimiciv_icd10_split.feather", out)
    assert result.returncode != 0 and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    result = _run(cli, root, splits_dir / "mimiciv_icd10_split.feather", out, "--overwrite", "--min-count", "1")
    assert result.returncode == 0, result.stderr
    assert not (out / "keep.txt").exists() and (out / "documents.parquet").is_file()
