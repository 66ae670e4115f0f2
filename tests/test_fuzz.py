"""Property-based fuzzing (Hypothesis) of what reads untrusted input: the `predict` note reader,
`prepare custom`, and the evidence offsets on odd Unicode.

Every property is bounded (few examples, no deadline) and derandomized, so CI is reproducible
and the file runs in well under a minute. The contract checked everywhere: a result, or a
`ClemError` with a one-line message that never contains note text (a planted marker)."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_fixtures import minilm_path, tiny_bert

from clem_icd.data.custom import prepare_custom
from clem_icd.data.dataset import PreparedDataset
from clem_icd.errors import ClemError
from clem_icd.inference import NotePredictor, PredictOptions
from clem_icd.inference.inputs import NoteRecord, read_notes

MARKER = "Qzyxwv7731PHI"  # planted in every note text; must never appear in a message


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])

# ---------------------------------------------------------------- shared strategies

ODD = ["\x00", "\u200f", "\u200e", "\u0301", "\u0308", "\r\n", "\r", "\n", "\t", "\u2028", "\ufeff",
       "\U0001f600", "\U0001f468\u200d\U0001f469", "İ", "ß", "ﬁ", "漢字", "é", "  ", "\u00a0", "\x0b", '"',
       ",", ";", "'", "\\"]
WORDS = ["pneumonia", "hypertension", "I10", "0DT70ZZ", "a", "12", "3.5", "x" * 300,
         "Supercalifragilistic" * 20]
pieces = st.one_of(st.sampled_from(ODD), st.sampled_from(WORDS), st.text(max_size=8))


@st.composite
def note_texts(draw, *, marker: bool = True) -> str:
    """A note with odd Unicode around words (and the marker, which makes it non-blank)."""
    parts = draw(st.lists(pieces, max_size=12))
    if marker:
        parts.insert(draw(st.integers(0, len(parts))), MARKER)
    return "".join(parts)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                    st.sampled_from(["", "  ", "\x00", "\ud800", "nan", "null", "007"]))
IDS = st.one_of(st.integers(0, 50).map(str), st.integers(0, 50), SCALARS)


def values(texts) -> st.SearchStrategy:
    """A text field: a note, or anything else in its place."""
    return st.one_of(texts, texts.map(lambda t: t + "\ud800"), texts.map(lambda t: "\u200f" + t),
                     SCALARS, st.lists(st.text(max_size=3), max_size=2))


def to_cell(value) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def encode(text: str) -> bytes:
    """UTF-8, with lone surrogates written as their raw (invalid) bytes."""
    return text.encode("utf-8", "surrogatepass")


def delimited(rows: list[dict], header: list[str] | None, delimiter: str) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    for row in rows:
        writer.writerow([to_cell(row.get(name)) for name in (header or list(row))])
    return encode(buffer.getvalue())


def jsonl(rows: list[dict], ensure_ascii: bool) -> bytes:
    # ensure_ascii=True writes lone surrogates as "\ud800" escapes; False writes their raw bytes
    return b"".join(encode(json.dumps(row, ensure_ascii=ensure_ascii)) + b"\n" for row in rows)


def parquet(rows: list[dict], names: list[str], path: Path) -> None:
    """Columns typed by their first non-null value; mixed columns become strings."""
    columns = {}
    for name in names:
        column = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(column, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError):
            columns[name] = pa.array([None if v is None else repr(v) for v in column], pa.string())
    pq.write_table(pa.table(columns) if columns else pa.table({"x": pa.array([], pa.int64())}), path)


def assert_clean_error(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert MARKER not in message, "note text in an error message"


# ---------------------------------------------------------------- 1. the predict input reader

FORMATS = ["notes.jsonl", "notes.ndjson", "notes.csv", "notes.tsv", "notes.parquet", "note.txt",
           "notes.csv.gz", "notes.jsonl.gz", "note"]
RAW_JSONL_LINES = [b'{"id": "r1", "text": "\\ud800 ' + MARKER.encode() + b'"}',
                   b'{"id": 5, "text": "' + MARKER.encode() + b'\\u0000\\u200f"}',
                   b'{"id": ' + b"9" * 5000 + b', "text": "' + MARKER.encode() + b'"}',
                   b"[" * 50_000 + b"]" * 50_000, b'{"id": NaN, "text": "' + MARKER.encode() + b'"}',
                   b'{"id": "dup", "text": "' + MARKER.encode() + b'"}', b'"' + MARKER.encode() + b'"',
                   b"\xff\xfe" + MARKER.encode(), b"\x00" * 10]


@st.composite
def note_files(draw) -> tuple[str, object]:
    """(file name, content): bytes (gzipped for a .gz name), ('raw', bytes) written as they are,
    or ('parquet', rows, column names)."""
    name = draw(st.sampled_from(FORMATS))
    shape = draw(st.sampled_from(["records", "records", "records", "bytes", "empty", "huge"]))
    if shape == "empty":
        return name, b""
    if shape == "bytes":  # under a .gz name: a corrupt archive
        return name, ("raw", draw(st.binary(max_size=400)))
    # drawn first: late draws get the simplest values once an example's random data runs short
    raw = draw(st.sampled_from(RAW_JSONL_LINES)) if draw(st.booleans()) else b""
    ensure_ascii, no_header, crlf = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    texts = note_texts()
    if shape == "huge":
        texts = texts.map(lambda t: t + "y" * 200_000)
    fields = ["id", "text"]
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        row = {"id": draw(IDS), "text": draw(values(texts))}
        for extra in draw(st.lists(st.sampled_from(["codes", "extra", "Text", "ID"]), max_size=2)):
            row[extra] = draw(SCALARS)
        for missing in draw(st.lists(st.sampled_from(fields), max_size=1)):
            row.pop(missing, None)
        rows.append(row)
    names = draw(st.sampled_from([fields, fields + ["extra"], ["text", "id", "codes"], ["text"], ["id"],
                                  ["ID", "TEXT"]]))
    base = name.removesuffix(".gz")
    if base.endswith(".parquet"):
        return name, ("parquet", rows, names)
    if base.endswith((".csv", ".tsv")):
        header = None if no_header and rows else names  # no header: row 1 is data
        return name, delimited(rows, header, "\t" if base.endswith(".tsv") else ",")
    if base.endswith((".jsonl", ".ndjson")):
        return name, jsonl(rows, ensure_ascii) + raw + (b"\r\n" if crlf else b"")
    text = draw(texts)
    return name, encode(text) if draw(st.booleans()) else text.encode("utf-16")


def write_input(folder: Path, name: str, content) -> Path:
    path = folder / name
    if isinstance(content, tuple) and content[0] == "parquet":
        parquet(content[1], content[2], path)
    elif isinstance(content, tuple):
        path.write_bytes(content[1])
    else:
        path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    return path


def check_records(path: Path) -> list[NoteRecord]:
    try:
        records = list(read_notes([str(path)]))
    except ClemError as exc:
        assert_clean_error(str(exc))
        return []
    for record in records:
        assert isinstance(record, NoteRecord)
        if record.error is None:
            assert isinstance(record.text, str) and record.text.strip()
            record.text.encode("utf-8")  # no lone surrogates reach the tokenizer
            assert record.id is None or isinstance(record.id, str)
        else:
            assert record.text is None
            assert isinstance(record.error, str)
            assert str(path) in record.error or record.error.startswith("duplicate id")
            assert MARKER not in record.error, "note text in a record error"
    return records


@fuzz(150)
@given(note_files())
def test_read_notes_yields_records_or_one_line_errors(case):
    name, content = case
    with tempfile.TemporaryDirectory() as folder:
        check_records(write_input(Path(folder), name, content))


@pytest.mark.parametrize("name", ["notes.csv", "notes.csv.gz", "notes.tsv"])
def test_read_notes_edge_cases(name, tmp_path):
    """Shapes found by the fuzzer, kept as plain regression cases."""
    opener = gzip.compress if name.endswith(".gz") else bytes
    cases = {
        "no header": f"1,{MARKER} long note text here,extra\n".encode(),
        "huge field": b"id,text\n1," + MARKER.encode() + b"y" * 200_000 + b"\n",
        "NUL": b"id,text\n1,\x00" + MARKER.encode() + b"\n",
    }
    for case, data in cases.items():
        path = tmp_path / f"{case.replace(' ', '_')}-{name}"
        path.write_bytes(opener(data.replace(b",", b"\t") if name.endswith(".tsv") else data))
        check_records(path)
    corrupt = tmp_path / name.replace(".csv", ".jsonl")
    corrupt.write_bytes(b"\x1f\x8b not really gzip " + MARKER.encode())
    check_records(corrupt)


def test_read_notes_deep_json(tmp_path):
    """Outside Hypothesis, which raises the recursion limit: nesting that exhausts the default."""
    path = tmp_path / "notes.jsonl"
    path.write_bytes(RAW_JSONL_LINES[3] + b"\n" + RAW_JSONL_LINES[2] + b"\n" + RAW_JSONL_LINES[0] + b"\n")
    assert [r.error.rsplit(": ", 1)[1] for r in check_records(path)] == [
        "not valid JSON", "not valid JSON", "not valid Unicode"]


# ---------------------------------------------------------------- 2. prepare custom

CODES = st.one_of(st.sampled_from(["I10", "e11.9", "0DT70ZZ", "Z00.00", "i10;E11.9", "", " ; ", "XYZ",
                                   "I10|E11.9", None]),
                  st.lists(st.one_of(st.sampled_from(["I10", "0dt70zz", "bad code"]), st.none(),
                                     st.integers(0, 9)), max_size=3),
                  note_texts(), SCALARS)
SPLITS = st.one_of(st.sampled_from(["train", "val", "test", "dev", "validation", "TRAIN", "", "x"]), SCALARS)


@st.composite
def custom_inputs(draw) -> tuple[str, object]:
    name = draw(st.sampled_from(["notes.csv", "notes.tsv", "notes.jsonl", "notes.parquet", "notes.txt"]))
    if draw(st.integers(0, 9)) == 0:
        return name, ("raw", draw(st.binary(max_size=300)))
    # drawn first: late draws get the simplest values once an example's random data runs short
    raw = draw(st.sampled_from(RAW_JSONL_LINES)) + b"\n" if draw(st.booleans()) else b""
    ensure_ascii = draw(st.booleans())
    names = draw(st.sampled_from([["id", "text", "codes"], ["id", "text", "codes", "split"],
                                  ["id", "text"], ["text", "codes", "id", "extra"]]))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        text = draw(st.one_of(note_texts(), note_texts(), values(note_texts())))
        row = {"id": draw(st.one_of(st.sampled_from(["1", "2", "3", 1, 2, " 3 "]), IDS)), "text": text,
               "codes": draw(CODES), "split": draw(SPLITS), "extra": draw(SCALARS)}
        rows.append({k: v for k, v in row.items() if k in names})
    if name.endswith(".parquet"):
        return name, ("parquet", rows, names)
    if name.endswith(".jsonl"):
        return name, jsonl(rows, ensure_ascii) + raw
    return name, delimited(rows, names, "\t" if name.endswith(".tsv") else ",")


@fuzz(100)
@given(custom_inputs(), st.booleans())
def test_prepare_custom_writes_a_dataset_or_nothing(case, out_exists):
    name, content = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_input(folder, name, content)
        out = folder / "out"
        if out_exists:
            out.mkdir()
            (out / "keep.txt").write_text("x")
        try:
            prepared = prepare_custom(source, out)
        except ClemError as exc:
            assert_clean_error(str(exc))
            if out_exists:
                assert [p.name for p in out.iterdir()] == ["keep.txt"]
                assert (out / "keep.txt").read_text() == "x"
            else:
                assert not out.exists()
            assert sorted(p.name for p in folder.iterdir()) == sorted({name} | ({"out"} if out_exists else set()))
            return
        assert not out_exists
        dataset = PreparedDataset.load(out)
        assert dataset.documents.height == prepared.manifest["counts"]["documents"] > 0


@pytest.mark.parametrize("line", [RAW_JSONL_LINES[0], RAW_JSONL_LINES[2], RAW_JSONL_LINES[3]])
def test_prepare_custom_bad_json_lines(line, tmp_path):
    """Regression cases outside Hypothesis (which raises the recursion limit)."""
    source = tmp_path / "notes.jsonl"
    source.write_bytes(line.replace(b'"}', b'", "codes": "I10"}') + b"\n")
    with pytest.raises(ClemError) as error:
        prepare_custom(source, tmp_path / "out")
    assert_clean_error(str(error.value))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 3. evidence offsets

CODE_NAMES = ["I10", "E11.9", "J18.9"]


@functools.cache
def coder():
    from clem_icd.model import ICDCoder

    torch.manual_seed(0)
    model = ICDCoder.from_encoder(str(minilm_path()), CODE_NAMES, encoder_config=tiny_bert(), max_length=128)
    model.config.threshold = 0.0  # every code is reported, so every code is explained
    return model


evidence_texts = note_texts(marker=False).filter(lambda t: t.strip())


def assert_spans_match(texts: list[str], cleaning: str) -> None:
    model = coder()
    model.config.text_cleaning = cleaning
    try:
        results = NotePredictor(model, PredictOptions(explain="attention", evidence_threshold=0.0)).predict(texts)
    finally:
        model.config.text_cleaning = "none"
    for text, result in zip(texts, results, strict=True):
        assert len(result["codes"]) == len(CODE_NAMES)
        for entry in result["codes"]:
            for span in entry["evidence"]:
                assert 0 <= span["start"] < span["end"] <= len(text), span
                assert text[span["start"]:span["end"]] == span["text"]


@fuzz(40)
@given(st.lists(evidence_texts, min_size=1, max_size=3))
def test_evidence_spans_are_slices_of_the_note(texts):
    assert_spans_match(texts, "none")


@fuzz(40)
@given(st.lists(evidence_texts, min_size=1, max_size=3))
def test_evidence_spans_are_slices_of_the_note_with_edin_cleaning(texts):
    assert_spans_match(texts, "edin2023")


# ---------------------------------------------------------------- 4. the CodiEsp loader

CODIESP_CODES = st.one_of(st.sampled_from(["i10", "E11.9", "0DT70ZZ", "r69", "XYZ", "", " ", "a\tb"]),
                          note_texts().map(lambda t: " ".join(t.split())))  # one field of one line


@st.composite
def codiesp_folders(draw) -> dict[str, bytes]:
    """Relative path → bytes of a small CodiEsp-like tree (train and maybe dev)."""
    files = {}
    for split in draw(st.lists(st.sampled_from(["train", "dev"]), min_size=1, max_size=2, unique=True)):
        ids = draw(st.lists(st.sampled_from(["S1", "S2", "S3", "s 4", "S5.x"]), max_size=3, unique=True))
        for doc_id in ids:
            text = draw(st.one_of(note_texts().map(encode), st.binary(max_size=40), st.just(b"  \n")))
            files[f"{split}/text_files_en/{doc_id}.txt"] = text
        for task in draw(st.lists(st.sampled_from(["D", "P"]), max_size=2, unique=True)):
            lines = [draw(st.sampled_from(ids + ["S9"])) + "\t" + draw(CODIESP_CODES)
                     for _ in range(draw(st.integers(0, 4)))] if ids else []
            files[f"{split}/{split}{task}.tsv"] = encode("\n".join(lines))
    return files


@fuzz(40)
@given(codiesp_folders())
def test_prepare_codiesp_writes_a_dataset_or_nothing(files):
    from clem_icd.data.codiesp import prepare_codiesp

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "codiesp"
        for relative, data in files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(data)
        root.mkdir(exist_ok=True)
        out = Path(tmp) / "out"
        try:
            prepared = prepare_codiesp(root, out)
        except ClemError as exc:
            assert_clean_error(str(exc))
            assert not out.exists()
            return
        assert PreparedDataset.load(out).documents.height == prepared.manifest["counts"]["documents"]


def test_prepare_codiesp_does_not_quote_a_long_code(tmp_path):
    """A note text in the code column of a TSV (a shifted file) is not quoted in the message."""
    from clem_icd.data.codiesp import prepare_codiesp

    (tmp_path / "train" / "text_files_en").mkdir(parents=True)
    (tmp_path / "train" / "text_files_en" / "S1.txt").write_text("A note.")
    (tmp_path / "train" / "trainD.tsv").write_text(f"S1\t{MARKER} has pneumonia\n")
    (tmp_path / "train" / "trainP.tsv").write_text("")
    with pytest.raises(ClemError) as error:
        prepare_codiesp(tmp_path, tmp_path / "out")
    assert_clean_error(str(error.value))
    assert "trainD.tsv, row 1" in str(error.value)
