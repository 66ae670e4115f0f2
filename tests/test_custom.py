"""Custom data preparation (CSV, TSV, JSONL, Parquet): round trips, long format, the
stratified split, and every kind of bad input through the CLI (one line, no note text)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from clem_icd.data.custom import Columns, prepare_custom
from clem_icd.data.dataset import PreparedDataset

SECRET = "Zebediah Quince secret diagnosis"  # planted in note texts; must never be printed

# id, text, codes as written (various spellings), split as written
DOCS = [
    ("a-1", "Plain note, with a comma.", ["i10", "e11.9"], "train"),
    ("a-2", 'Quotes "here", a\nnewline and a\ttab.', ["0dt70zz"], "dev"),
    ("007", "Unicode: café – ü 漢字", [], "test"),
    ("a-4", "  leading and trailing spaces  ", ["Z00.00", "i10", "Z00.00"], "validation"),
]
EXPECTED = {
    "a-1": ("Plain note, with a comma.", ["I10", "E11.9"], "train"),
    "a-2": ('Quotes "here", a\nnewline and a\ttab.', ["0DT70ZZ"], "val"),
    "007": ("Unicode: café – ü 漢字", [], "test"),
    "a-4": ("  leading and trailing spaces  ", ["Z00.00", "I10"], "val"),
}


# ---------------------------------------------------------------- helpers




def frame(docs=DOCS, *, codes_as_lists: bool = False, separator: str = ";") -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [d[0] for d in docs], "text": [d[1] for d in docs],
         "codes": [d[2] if codes_as_lists else separator.join(d[2]) for d in docs],
         "split": [d[3] for d in docs]},
        schema={"id": pl.String, "text": pl.String,
                "codes": pl.List(pl.String) if codes_as_lists else pl.String, "split": pl.String},
    )


def write(path: Path, docs=DOCS, **options) -> Path:
    """Write `docs` in the format of `path`'s suffix; codes as lists where the format has them."""
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        frame(docs, **options).write_csv(path, separator="\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        frame(docs, codes_as_lists=True).write_parquet(path)
    else:
        lines = [json.dumps({"id": i, "text": t, "codes": c, "split": s}) for i, t, c, s in docs]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def documents(out: Path) -> dict[str, tuple]:
    rows = PreparedDataset.load(out).documents.select("id", "text", "codes", "split").iter_rows()
    return {r[0]: tuple(r[1:]) for r in rows}


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["notes.csv", "notes.tsv", "notes.jsonl", "notes.ndjson", "notes.parquet"])
def test_round_trip(name, tmp_path):
    source = write(tmp_path / name)
    manifest = prepare_custom(source, tmp_path / "out").manifest
    assert documents(tmp_path / "out") == EXPECTED
    assert PreparedDataset.load(tmp_path / "out").documents["id"].to_list() == [d[0] for d in DOCS]
    assert manifest["options"]["split_method"] == "column 'split'"
    assert manifest["inputs"][0]["path"] == str(source.resolve())
    codes = PreparedDataset.load(tmp_path / "out").codes
    assert dict(codes.select("code", "system").iter_rows()) == {
        "0DT70ZZ": "icd10pcs", "E11.9": "icd10cm", "I10": "icd10cm", "Z00.00": "icd10cm"}


def test_cli_round_trip_with_other_names_and_separator(tmp_path, run):
    source = tmp_path / "notes.csv"
    frame(separator="|").rename({"id": "note_id", "text": "body", "codes": "icd", "split": "fold"}).write_csv(source)
    code, _, err = run("prepare", "custom", "--input", source, "--out", tmp_path / "out", "--id-column", "note_id",
                       "--text-column", "body", "--codes-column", "icd", "--split-column", "fold",
                       "--code-separator", "|")
    assert code == 0, err
    assert "wrote" in err and "4 documents" in " ".join(err.split())
    assert documents(tmp_path / "out") == EXPECTED


def test_list_and_separated_codes_in_one_file(tmp_path):
    source = tmp_path / "notes.jsonl"
    records = [{"id": 1, "text": "a", "codes": ["I10", " e11.9 ", None]},
               {"id": 2, "text": "b", "codes": " I10 ;; 0DT70ZZ ; "},
               {"id": 3, "text": "c", "codes": None},
               {"id": 4, "text": "d", "codes": ""},
               {"id": 5, "text": "e", "codes": []}]
    source.write_text("\n".join(json.dumps(r) for r in records))
    prepare_custom(source, tmp_path / "out", seed=1)
    result = {i: codes for i, (_, codes, _) in documents(tmp_path / "out").items()}
    assert result == {"1": ["I10", "E11.9"], "2": ["I10", "0DT70ZZ"], "3": [], "4": [], "5": []}
    assert PreparedDataset.load(tmp_path / "out").manifest["counts"]["documents_without_codes"] == 3


def test_parquet_integer_ids(tmp_path):
    source = tmp_path / "notes.parquet"
    pl.DataFrame({"id": [10, 11], "text": ["x", "y"], "codes": [["I10"], []], "split": ["train", "test"]}).write_parquet(source)
    prepare_custom(source, tmp_path / "out")
    assert documents(tmp_path / "out") == {"10": ("x", ["I10"], "train"), "11": ("y", [], "test")}


def test_long_format_rows_are_merged(tmp_path):
    source = tmp_path / "long.csv"
    source.write_text('id,text,codes,split\n'
                      '1,"Same note",I10,train\n'
                      '2,"Other note",E11.9,test\n'
                      '1,"Same note",0DT70ZZ;I10,train\n'
                      '1,"Same note",,train\n', encoding="utf-8")
    manifest = prepare_custom(source, tmp_path / "out").manifest
    assert documents(tmp_path / "out") == {"1": ("Same note", ["I10", "0DT70ZZ"], "train"),
                                           "2": ("Other note", ["E11.9"], "test")}
    assert manifest["counts"]["rows"] == 4
    assert manifest["counts"]["rows_merged_into_earlier_rows"] == 2


@pytest.mark.parametrize("system, raw, code", [("icd9cm", "4019", "401.9"), ("icd9pcs", "3893", "38.93"),
                                               ("icd10pcs", "0dt70zz", "0DT70ZZ"), ("icd10cm", "e119", "E11.9")])
def test_explicit_code_system(system, raw, code, tmp_path):
    source = tmp_path / "notes.csv"
    source.write_text(f"id,text,codes,split\n1,note,{raw},train\n", encoding="utf-8")
    manifest = prepare_custom(source, tmp_path / "out", code_system=system).manifest
    assert PreparedDataset.load(tmp_path / "out").codes.select("code", "system").rows() == [(code, system)]
    assert manifest["options"]["code_system"] == system


def test_descriptions_without_code_tables(tmp_path):
    """ICD-10-CM and ICD-10-PCS descriptions come with the packages: no table, no flag."""
    source = write(tmp_path / "notes.csv")
    prepared = prepare_custom(source, tmp_path / "out")
    descriptions = dict(PreparedDataset.load(tmp_path / "out").codes.select("code", "description").iter_rows())
    assert descriptions["0DT70ZZ"].startswith("Resection of Stomach")
    assert all(descriptions.values())
    assert prepared.manifest["descriptions"]["icd10pcs"] == {"icd10pcs": 1}
    assert prepared.manifest["code_check"]["unchecked_systems"] == []
    assert prepared.report.summary() is None  # every code known


@pytest.mark.shared_data
def test_code_tables_give_descriptions(tmp_path, mimic_iv_demo):
    source = write(tmp_path / "notes.csv")
    hosp = mimic_iv_demo / "hosp"
    manifest = prepare_custom(source, tmp_path / "out", d_icd_diagnoses=hosp / "d_icd_diagnoses.csv.gz",
                              d_icd_procedures=hosp / "d_icd_procedures.csv.gz").manifest
    descriptions = dict(PreparedDataset.load(tmp_path / "out").codes.select("code", "description").iter_rows())
    assert "Resection of Stomach" in descriptions["0DT70ZZ"]
    assert descriptions["I10"] == "Essential (primary) hypertension"
    assert len(manifest["inputs"]) == 3
    assert manifest["code_check"]["unknown_codes"] == 0


# ---------------------------------------------------------------- split made by stratification


def many_docs(n: int = 300) -> list[tuple]:
    codes = ["I10", "E11.9", "Z00.00", "J45.909", "0DT70ZZ", "N18.3"]
    return [(f"d{i}", f"note {i}", [c for j, c in enumerate(codes) if (i * (j + 3)) % (j + 2) == 0], "")
            for i in range(n)]


def test_split_is_made_when_the_file_has_none(tmp_path):
    source = tmp_path / "notes.csv"
    frame(many_docs()).drop("split").write_csv(source)
    manifest = prepare_custom(source, tmp_path / "a", seed=42).manifest
    prepare_custom(source, tmp_path / "b", seed=42)
    prepare_custom(source, tmp_path / "c", seed=43)
    splits = {name: [s for _, _, s in documents(tmp_path / name).values()] for name in "abc"}
    assert splits["a"] == splits["b"]
    assert splits["a"] != splits["c"]
    counts = Counter(splits["a"])
    assert counts["train"] / 300 == pytest.approx(0.8, abs=0.05)
    assert counts["val"] > 15 and counts["test"] > 15
    options = manifest["options"]
    assert options["seed"] == 42 and "stratification" in options["split_method"]
    assert options["columns"]["split"] is None


def test_cli_seed_option(tmp_path, run):
    source = tmp_path / "notes.jsonl"
    write(source, [(i, t, c, "") for i, t, c, _ in many_docs(100)])
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    source.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "split"}) for r in rows))
    assert run("prepare", "custom", "-i", source, "-o", tmp_path / "out", "--seed", "7")[0] == 0
    manifest = PreparedDataset.load(tmp_path / "out").manifest
    assert manifest["options"]["seed"] == 7
    assert sum(manifest["counts"]["by_split"].values()) == 100


# ---------------------------------------------------------------- bad input


def csv_bytes(*rows: str, header: str = "id,text,codes,split") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


NOTE = f'"{SECRET}, seen today"'
BAD = {
    # case: (file name, content (None: no file), extra arguments, words the one error line must contain)
    "missing file": ("notes.csv", None, [], ["notes.csv", "not found"]),
    "unsupported type": ("notes.xlsx", b"x", [], ["notes.xlsx", "unsupported"]),
    "missing column": ("notes.csv", csv_bytes(f"1,{NOTE},I10", header="id,text,code"), [],
                       ["notes.csv", "missing column(s) codes", "did you mean 'code'"]),
    "no header row": ("notes.csv", csv_bytes(f"2,{NOTE},I10", header=f"1,{NOTE},I10"), [],
                      ["notes.csv", "missing column(s) id, text, codes"]),
    "split column named but absent": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train"), ["--split-column", "fold"],
                                      ["notes.csv", "fold"]),
    "non-UTF-8 CSV": ("notes.csv", csv_bytes("1,fine,I10,train") + f'2,"{SECRET} \xff",I10,train\n'.encode("latin-1"),
                      [], ["notes.csv", "line 3", "UTF-8"]),
    "non-UTF-8 JSONL": ("notes.jsonl", b'{"id": 1, "text": "ok", "codes": []}\n'
                        + f'{{"id": 2, "text": "{SECRET} \xe9", "codes": []}}\n'.encode("latin-1"),
                        [], ["notes.jsonl", "line 2", "UTF-8"]),
    "malformed CSV": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train,extra,fields"), [], ["notes.csv", "cannot read CSV"]),
    "malformed JSON": ("notes.jsonl", f'{{"id": 1, "text": "ok", "codes": []}}\n{{"id": 2, "text": "{SECRET}"\n'.encode(),
                       [], ["notes.jsonl", "row 2", "not valid JSON"]),
    "JSON line not an object": ("notes.jsonl", f'["{SECRET}"]\n'.encode(), [], ["notes.jsonl", "row 1", "object"]),
    "JSON record without a field": ("notes.jsonl", f'{{"id": 1, "text": "{SECRET}", "codes": []}}\n'
                                    f'{{"id": 2, "codes": []}}\n'.encode(), [], ["row 2", "field 'text'", "missing"]),
    "same id, different text": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train", "2,other,I10,train",
                                                       f'1,"{SECRET}, changed",I10,train'),
                                [], ["row 3", "row 1", "different text"]),
    "same id, different split": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train", f"1,{NOTE},E11.9,test"),
                                 [], ["row 2", "row 1", "different split"]),
    "empty text": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train", '2,"  \n ",I10,train'),
                   [], ["notes.csv", "row 2", "field 'text'", "empty"]),
    "missing text": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train", "2,,I10,train"), [], ["row 2", "field 'text'"]),
    "missing id": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train", f",{NOTE},I10,train"), [], ["row 2", "field 'id'"]),
    "unknown split": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train", f"2,{NOTE},I10,holdout"),
                      [], ["notes.csv", "row 2", "field 'split'"]),
    "missing split": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train", f"2,{NOTE},I10,"), [], ["row 2", "field 'split'"]),
    "bad code": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train", f"2,{NOTE},I10;OOPS1,train"),
                 [], ["notes.csv", "row 2", "field 'codes'", "'OOPS1'"]),
    "note text in the codes column": ("notes.csv", csv_bytes(f"1,{NOTE},{NOTE},train"),
                                      [], ["row 1", "field 'codes'", "characters"]),
    "codes not strings": ("notes.jsonl", f'{{"id": 1, "text": "{SECRET}", "codes": [401.9]}}\n'.encode(),
                          [], ["notes.jsonl", "row 1", "field 'codes'"]),
    "no data rows": ("notes.csv", csv_bytes(), [], ["notes.csv", "no data rows"]),
    "unknown code system": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train"), ["--code-system", "icd11"],
                            ["--code-system"]),
    "missing dictionary": ("notes.csv", csv_bytes(f"1,{NOTE},I10,train"), ["--d-icd-procedures", "nope.csv"],
                           ["nope.csv", "not found"]),
}


def assert_one_line_error(code: int, out: str, err: str, words: list[str]) -> None:
    assert code == 2  # ClemError: a user error, no traceback
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    for part in (SECRET, "Zebediah", "Quince"):
        assert part not in out + err


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, tmp_path, run):
    name, content, arguments, words = BAD[case]
    source = tmp_path / name
    if content is not None:
        source.write_bytes(content)
    code, out, err = run("prepare", "custom", "--input", source, "--out", tmp_path / "out", *arguments)
    assert_one_line_error(code, out, err, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if content is not None else [])


def test_bad_parquet(tmp_path, run):
    source = tmp_path / "notes.parquet"
    pl.DataFrame({"id": ["1", "2"], "text": [SECRET, None], "codes": [["I10"], []]}).write_parquet(source)
    code, out, err = run("prepare", "custom", "--input", source, "--out", tmp_path / "out")
    assert_one_line_error(code, out, err, ["notes.parquet", "row 2", "field 'text'"])
    source.write_bytes(b"PAR1 not really parquet " + SECRET.encode())
    code, out, err = run("prepare", "custom", "--input", source, "--out", tmp_path / "out")
    assert_one_line_error(code, out, err, ["notes.parquet", "cannot read PARQUET"])
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept(tmp_path, run):
    source = write(tmp_path / "notes.csv")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    code, out, err = run("prepare", "custom", "--input", source, "--out", tmp_path / "out")
    assert_one_line_error(code, out, err, ["out", "--overwrite"])
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
    assert run("prepare", "custom", "--input", source, "--out", tmp_path / "out", "--overwrite")[0] == 0
    assert not (tmp_path / "out" / "keep.txt").exists()


def test_bad_input_in_a_fresh_interpreter(cli, tmp_path):
    """The same contract through a real process: exit status 2, one line on stderr, no text."""
    source = tmp_path / "notes.csv"
    source.write_bytes(csv_bytes(f"1,{NOTE},I10,train", f'1,"{SECRET}!",I10,train'))
    result = cli("prepare", "custom", "--input", source, "--out", tmp_path / "out")
    assert_one_line_error(result.returncode, result.stdout, result.stderr, ["notes.csv", "row 2", "row 1"])
    assert not (tmp_path / "out").exists()


def test_library_columns_object(tmp_path):
    source = tmp_path / "notes.csv"
    frame().rename({"text": "note"}).write_csv(source)
    prepare_custom(source, tmp_path / "out", columns=Columns(text="note"))
    assert documents(tmp_path / "out") == EXPECTED
