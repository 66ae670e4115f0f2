"""Property-based fuzzing (Hypothesis) of what reads untrusted input: the `predict` note reader
(its ids too), `prepare custom`, the CodiEsp, MIMIC-IV and MIMIC-III loaders, and the evidence
offsets on odd Unicode.

Every property is bounded (few examples, no deadline) and derandomized, so CI is reproducible
and the file runs in well under a minute. The contract checked everywhere: a result, or a
`ClemError` with a one-line message that never contains note text (a planted marker)."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import re
import tempfile
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.feather
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from model_fixtures import minilm_path, tiny_bert

from clem_icd.codes import CodeDictionary
from clem_icd.data.custom import prepare_custom
from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.text import is_encodable
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


def csv_text(rows: list[list[str]], delimiter: str = ",", crlf: bool = False) -> str:
    """Rows as CSV that any reader reads back as written. csv quotes a field with a line break
    only if the break is in its line terminator: a bare "\r" would end the record."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    for row in rows:
        writer.writerow(row)
        if not crlf:
            buffer.seek(buffer.tell() - 2)
            buffer.write("\n")
            buffer.truncate()
    return buffer.getvalue()


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
            assert record.id is None or id_outcome(record.id) == record.id, "an id no output can hold"
        else:
            assert record.text is None
            assert isinstance(record.error, str)
            assert str(path) in record.error or record.error.startswith("duplicate id")
            assert_clean_error(record.error)
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


# ---------------------------------------------------------------- 1b. ids in the predict reader
#
# An id is echoed in every output record, in the TSV formats' lines and in the duplicate-id
# message: it must come out exactly as given, or the record is an error naming the row (line)
# and the field.

ODD_IDS = ["a\nb", "a\rb", "a\r\nb", "a\tb", "\x00", "x\x00y", "\x1b[31m", "\u2028", "a\u2029", "\x85",
           "\ud800", "a\udcff", "\ud83d", "\u200fid\u200e", "e\u0301", "\ufeff1", " padded ", "\u00a01",
           "\U0001f468\u200d\U0001f469", "i" * 256, "i" * 257, "9" * 300, "i" * 200_000, "007", "1e5", " "]
ID_VALUES = st.one_of(st.sampled_from(ODD_IDS), st.text(max_size=10), st.integers(-(2**70), 2**70),
                      st.integers(10**255, 10**300), st.floats(), st.booleans(), st.none(),
                      st.lists(st.integers(0, 9), max_size=2), st.just({"id": 1}))


def id_outcome(value) -> str | None:
    """The id a record must have (a str), or None: the record is an error naming row and field."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    value = str(value)
    if not value.strip() or not is_encodable(value) or len(value) > 256:
        return None
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        return None
    return value


@st.composite
def id_files(draw) -> tuple[str, bytes | pa.Table, list]:
    """(file name, content, the id value each row holds as read back)."""
    kind = draw(st.sampled_from(["jsonl", "jsonl-ascii", "csv", "tsv", "parquet", "parquet-bytes"]))
    ids = draw(st.lists(ID_VALUES, min_size=1, max_size=6))
    texts = [draw(note_texts()) for _ in ids]
    if kind.startswith("jsonl"):
        rows = [{"id": i, "text": t} for i, t in zip(ids, texts)]
        return "notes.jsonl", jsonl(rows, kind == "jsonl-ascii"), ids
    if kind in ("csv", "tsv"):
        cells = [to_cell(i) for i in ids]  # a CSV holds strings only
        body = csv_text([["id", "text"], *zip(cells, texts)], "," if kind == "csv" else "\t", draw(st.booleans()))
        return f"notes.{kind}", encode(body), cells
    if kind == "parquet-bytes":  # a string column whose bytes are not UTF-8: a writer that does not check
        data = [encode(i) if isinstance(i, str) else encode(to_cell(i)) for i in ids]
        offsets = [0]
        for value in data:
            offsets.append(offsets[-1] + len(value))
        column = pa.Array.from_buffers(pa.large_string(), len(data), [
            None, pa.py_buffer(pa.array(offsets, pa.int64()).buffers()[1]), pa.py_buffer(b"".join(data))])
        held = [v.decode("utf-8") if is_encodable(v.decode("utf-8", "surrogatepass")) else None
                for v in data]
        return "notes.parquet", pa.table({"id": column, "text": pa.array(texts)}), held
    try:
        column = pa.array(ids)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError):
        column = pa.array([None if v is None else repr(v) for v in ids], pa.string())
    return "notes.parquet", pa.table({"id": column, "text": pa.array(texts)}), column.to_pylist()


@fuzz(80)
@given(id_files())
def test_read_notes_ids_come_out_exactly_or_as_an_error_naming_row_and_field(case):
    from clem_icd.inference.run import code_records
    from clem_icd.inference.writers import RecordWriter

    name, content, held = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        if isinstance(content, pa.Table):
            pq.write_table(content, path)
        else:
            path.write_bytes(content)
        records = check_records(path)
        place = "line" if name.endswith(".jsonl") else "row"
        assert len(records) == len(held)
        seen = set()
        for number, (record, value) in enumerate(zip(records, held), start=1):
            want = id_outcome(value)
            if want is None:
                assert record.error is not None and record.id is None, (value, record)
                where = f"{path}, {place} {number}"
                assert (record.error.startswith(f"{where}, field 'id': ")  # a JSONL line that is not
                        or record.error.startswith(f"{where}: not valid UTF-8")), record.error  # UTF-8
            elif want in seen:
                assert record.error == f"duplicate id '{want}' (an earlier record has it)"
            else:
                assert (record.id, record.error) == (want, None)
                seen.add(want)

        def predict(texts):  # a stand-in model: one code per note
            return [{"codes": [{"code": "I10", "system": "icd10cm", "probability": 0.9}], "truncated": False}
                    for _ in texts]

        for format in ("jsonl", "codiesp"):  # the ids through the writers, as `predict` writes them
            out = io.BytesIO()
            stream = io.TextIOWrapper(out, encoding="utf-8", newline="")  # like stdout: strict UTF-8
            with RecordWriter(None, format, stream=stream) as writer:
                for record in code_records(predict, records):
                    writer.write(record)
            lines = out.getvalue().decode("utf-8").split("\n")[:-1]
            coded = [r.id for r in records if r.error is None]
            if format == "jsonl":
                assert [json.loads(line)["id"] for line in lines] == [r.id for r in records]
            else:
                assert [line.split("\t") for line in lines] == [[i, "i10"] for i in coded]


def test_read_notes_bad_ids_found_by_the_fuzzer(tmp_path):
    """Plain cases: an id with a lone surrogate reached the writers (a UnicodeEncodeError on
    stdout); ids with line breaks or 200k characters were echoed in TSV lines and duplicate-id
    messages; invalid UTF-8 in a Parquet string column raised UnicodeDecodeError; an id of
    invalid UTF-8 in a CSV was reported without its field."""
    jsonl_path = tmp_path / "notes.jsonl"
    jsonl_path.write_bytes(b"".join(json.dumps({"id": i, "text": MARKER}).encode() + b"\n"
                                    for i in ["\ud800", "a\nb", "a\nb", "i" * 200_000, "ok"]))
    csv_path = tmp_path / "notes.csv"
    csv_path.write_bytes(b"id,text\n\xff1," + MARKER.encode() + b"\n")
    bad = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(bytes(pa.array([0, 2, 4], pa.int32())
                                                                         .buffers()[1])), pa.py_buffer(b"\xffxok")])
    parquet_path = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"id": bad, "text": pa.array([MARKER, MARKER])}), parquet_path)
    errors = [(r.id, r.error) for r in check_records(jsonl_path)]
    assert errors == [(None, f"{jsonl_path}, line 1, field 'id': not valid Unicode"),
                      (None, f"{jsonl_path}, line 2, field 'id': the id holds a line break, tab or other "
                             "control character"),
                      (None, f"{jsonl_path}, line 3, field 'id': the id holds a line break, tab or other "
                             "control character"),
                      (None, f"{jsonl_path}, line 4, field 'id': the id is longer than 256 characters"),
                      ("ok", None)]
    assert [r.error for r in check_records(csv_path)] == [f"{csv_path}, row 1, field 'id': not valid UTF-8"]
    assert [(r.id, r.error) for r in check_records(parquet_path)] == [
        (None, f"{parquet_path}, row 1, field 'id': not valid UTF-8"), ("ok", None)]


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


# ---------------------------------------------------------------- 5. the MIMIC-IV and MIMIC-III loaders
#
# Each example damages one table of a small MIMIC-shaped folder built from the real demo tables
# (tests/mimic_fixture.py): cells (bad ids, versions and codes, odd or invalid-UTF-8 note text,
# fields over 128 KiB), rows (duplicated, dropped, a field more or less), columns (extra,
# duplicated names, missing) and the file itself (random bytes, truncated or corrupt gzip,
# empty, not compressed). An independent reference of the rules (below) says what must come
# out: the right documents, or an error at a given file, row and field.


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class Flavor:
    files: dict[str, str]  # role -> path in the input folder
    id: str
    code: str
    version: str | None
    text: str
    category: str | None
    separator: str
    dedup: bool  # drop a note whose (admission, text) was seen before


MIMIC_IV = Flavor({"procedures": "hosp/procedures_icd.csv.gz", "diagnoses": "hosp/diagnoses_icd.csv.gz",
                   "notes": "note/discharge.csv.gz"}, "hadm_id", "icd_code", "icd_version", "text", None,
                  "\n\n", True)
MIMIC_III = Flavor({"procedures": "PROCEDURES_ICD.csv.gz", "diagnoses": "DIAGNOSES_ICD.csv.gz",
                    "notes": "NOTEEVENTS.csv.gz"}, "HADM_ID", "ICD9_CODE", None, "TEXT", "CATEGORY", " ", False)
III_NOTE_HEADER = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY",
                   "DESCRIPTION", "CGID", "ISERROR", "TEXT"]
Table = tuple[list[str], list[list[str]]]  # header, rows; a lone surrogate in a cell = invalid UTF-8


class NoCodeLists(CodeDictionary):
    """No code check and no descriptions: they are not what is fuzzed here, and loading the
    ICD-10-CM list takes seconds."""

    def can_check(self, system) -> bool:
        return False

    def describe_with_rule(self, code, system):
        return None, None


class Bases(dict):
    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing example
        return "mimic_base"


def csv_gz(table: Table, crlf: bool = False) -> bytes:
    return gzip.compress(encode(csv_text([table[0], *table[1]], crlf=crlf)), compresslevel=1)


@pytest.fixture(scope="module")
def mimic_base(mimic_iv_demo, tmp_path_factory) -> dict:
    """Per flavor: the clean tables (~35 admissions of the demo, with the fixture's planted
    duplicate, second and empty notes), a split file, and its admission -> split map."""
    from mimic_fixture import build_mimic_iv, read_gz_csv

    from clem_icd import progress

    root = tmp_path_factory.mktemp("fuzz-mimic")
    build_mimic_iv(mimic_iv_demo, root)
    notes = read_gz_csv(root / "note" / "discharge.csv.gz")
    codes = {role: read_gz_csv(root / "hosp" / f"{role}_icd.csv.gz") for role in ("procedures", "diagnoses")}
    base = Bases()
    for flavor, version in ((MIMIC_IV, "10"), (MIMIC_III, "9")):
        coded = {r["hadm_id"] for rows in codes.values() for r in rows if r["icd_version"] == version}
        in_order = list(dict.fromkeys(r["hadm_id"] for r in notes))
        chosen = [h for h in in_order if h in coded][:30] + [h for h in in_order if h not in coded][:4]
        keep = set(chosen) | {"29999999"}  # the fixture's note without codes
        tables = {}
        for role, rows in codes.items():
            if flavor is MIMIC_IV:
                header = list(rows[0])
                tables[role] = header, [[r[c] for c in header] for r in rows if r["hadm_id"] in keep]
            else:
                tables[role] = (["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"],
                                [[str(i), r["subject_id"], r["hadm_id"], r["seq_num"], r["icd_code"]]
                                 for i, r in enumerate(rows) if r["hadm_id"] in keep and r["icd_version"] == "9"])
        kept_notes = [r for r in notes if r["hadm_id"] in keep]
        if flavor is MIMIC_IV:
            tables["notes"] = list(notes[0]), [list(r.values()) for r in kept_notes]
        else:
            tables["notes"] = III_NOTE_HEADER, [
                [str(i), r["subject_id"], r["hadm_id"], "", "", "", "Nursing" if i % 4 == 3 else "Discharge summary",
                 "Report", "", "", r["text"]] for i, r in enumerate(kept_notes)]
        splits = {int(h): ("train", "val", "test")[i % 3] for i, h in enumerate(chosen[:-6])}  # some left out
        split_file = root / f"split-{version}.feather"
        pa.feather.write_feather(pa.table({"_id": list(splits), "split": list(splits.values())}), split_file)
        base[flavor] = {"tables": tables, "gz": {role: csv_gz(t) for role, t in tables.items()},
                        "split_file": split_file, "splits": splits}
    base["dictionary"] = NoCodeLists()
    shown = progress._enabled
    progress.set_enabled(False)  # as under --quiet: rich's bars cost more than a small example
    yield base
    progress.set_enabled(shown)


# The reference: what the Edin et al. 2023 rules (clem_icd.data.mimic's docstring) and the input
# checks make of the tables, written independently of the code under test.

WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
              "\u2028\u2029\u202f\u205f\u3000"  # Unicode White_Space: what a cell's padding may be
# Cells that the note reader (pyarrow, like pandas in the reference code) reads as missing.
NULL_CELLS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
              "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"}


class Failure(Exception):
    """The error the reference expects: its file, and the row and field when it has them."""

    def __init__(self, path, row: int | None = None, field: str | None = None):
        super().__init__(path, row, field)
        self.path, self.row, self.field = str(path), row, field


def ref_int(cell: str | None, path, row: int, field: str) -> int | None:
    text = (cell or "").strip(WHITE_SPACE)
    if not text:
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", text) or not -(2**63) <= int(text) < 2**63:
        raise Failure(path, row, field)
    return int(text)


def ref_columns(table: Table, path, names: list[str]) -> dict[str, int]:
    header = table[0]
    for name in names:
        if name not in header:
            raise Failure(path, field=name)
    return {name: header.index(name) for name in names}  # the first of a repeated name


def first_invalid(table: Table, path, at: dict[str, int], names: list[str]) -> None:
    for name in names:
        rows = [n for n, row in enumerate(table[1], 1) if not is_encodable(row[at[name]])]
        if rows:
            raise Failure(path, rows[0], name)


def ref_codes(flavor: Flavor, table: Table, path, system, version: int) -> set[tuple[int, str]]:
    from clem_icd.codes import normalize_code

    names = [flavor.id, flavor.code] + ([flavor.version] if flavor.version else [])
    at = ref_columns(table, path, names)
    width = len(table[0])
    if any(len(row) > width for row in table[1]) or not all(is_encodable(c) for row in table[1] for c in row):
        if any(len(row) != width for row in table[1]):  # polars refuses a long row; pyarrow, which
            raise Failure(path)  # then looks for the invalid UTF-8, a short one too: no row number
        first_invalid(table, path, at, names)
        raise Failure(path)  # in a column that is not read: the file is still not UTF-8
    rows = [(n, row + [None] * (width - len(row))) for n, row in enumerate(table[1], 1)]  # short: nulls
    if flavor.version:
        versions = [ref_int(row[at[flavor.version]], path, n, flavor.version) for n, row in rows]
        rows = [r for r, v in zip(rows, versions) if v == version]
    hadm = {n: ref_int(row[at[flavor.id]], path, n, flavor.id) for n, row in rows}
    raw = {n: (row[at[flavor.code]] or "").strip(WHITE_SPACE) for n, row in rows}
    for n, _ in rows:
        if raw[n] and hadm[n] is None:
            raise Failure(path, n, flavor.id)
    pairs = set()
    for n, _ in rows:
        if raw[n]:
            try:
                pairs.add((hadm[n], normalize_code(raw[n], system)))
            except ValueError:
                raise Failure(path, n, flavor.code) from None
    return pairs


def ref_notes(flavor: Flavor, table: Table, path) -> dict[int, list[str]]:
    names = [flavor.id, flavor.text] + ([flavor.category] if flavor.category else [])
    at = ref_columns(table, path, names)
    if any(len(row) != len(table[0]) for row in table[1]):
        raise Failure(path)  # "a row has N fields, the header has M"
    first_invalid(table, path, at, [flavor.text, flavor.id] + names[2:])  # the order they are decoded in
    cells = [[None if row[at[name]] in NULL_CELLS else row[at[name]] for name in names] for row in table[1]]
    hadms = [ref_int(row[0], path, n, flavor.id) for n, row in enumerate(cells, 1)]
    notes: dict[int, list[str]] = {}
    for hadm, (_, text, *category) in zip(hadms, cells):
        usable = not category or category[0] == "Discharge summary"
        if usable and text is not None and text.strip() and hadm is not None:
            if not (flavor.dedup and text in notes.get(hadm, [])):
                notes.setdefault(hadm, []).append(text)
    return notes


def reference_documents(flavor: Flavor, tables: dict[str, Table], root: Path, split_file: Path,
                        splits: dict[int, str], version: int, min_count: int) -> dict[str, tuple]:
    """id -> (text, codes, split), or raises the expected Failure."""
    from clem_icd.codes import CodeSystem, system_for

    codes = {}
    for role in ("procedures", "diagnoses"):  # procedures first: the order they are read in
        system = system_for(version, role == "diagnoses") if flavor.version else (
            CodeSystem.ICD9CM if role == "diagnoses" else CodeSystem.ICD9PCS)
        codes[role] = ref_codes(flavor, tables[role], root / flavor.files[role], system, version)
    notes = ref_notes(flavor, tables["notes"], root / flavor.files["notes"])
    joined = {h for pairs in codes.values() for h, _ in pairs} & set(notes)
    kept = {}
    for role, pairs in codes.items():
        counts = Counter(code for h, code in pairs if h in joined)
        kept[role] = {c for c, n in counts.items() if n >= min_count}
    documents = {}
    for hadm in joined:
        target = [c for role in ("procedures", "diagnoses")
                  for c in sorted(c for h, c in codes[role] if h == hadm and c in kept[role])]
        if target and hadm in splits:
            documents[str(hadm)] = (flavor.separator.join(notes[hadm]), target, splits[hadm])
    if not documents:
        raise Failure(split_file)  # "the split file matches no admission"
    return documents


# What the fuzzer draws: edits of one table, then maybe damage to its bytes.

INT_CELLS = ["", " ", "nan", "NaN", "NA", "x12", "1.0", "99999999999999999999", "\x00", "１２", "-", "+7",
             "1\ud800"]
CODE_CELLS = ["", " ", "nan", "NA", "I10", " i10 ", "e11.9", "0DT70ZZ", "4019", "V5861", "3893", "I1#0",
              "I10\x00", "\u200fI10", "I10\ud800", "\x1c", "\u3000I10"]
VERSION_CELLS = ["", "9", "10", " 10 ", "nan", "11", "1e1", "10\ud800"]
CATEGORY_CELLS = ["Discharge summary", "Nursing", "", "NA", "discharge summary", "Discharge summary\ud800"]
BIG = MARKER + "z" * 140_000  # a field over csv's 128 KiB default limit


def cell_values(kind: str, hadms: list[str], *, big: bool = True) -> st.SearchStrategy:
    """Values for one cell of a column of that kind; `big`: with fields over 128 KiB."""
    texts = note_texts()
    if kind == "id":
        return st.one_of(st.sampled_from(INT_CELLS), st.sampled_from(hadms),
                         st.sampled_from(hadms).map(lambda h: f" {h} "))
    if kind == "code":
        return st.one_of(st.sampled_from(CODE_CELLS), texts, st.just("A" * 140_000 + MARKER if big else "A1"))
    if kind == "version":
        return st.sampled_from(VERSION_CELLS)
    if kind == "category":
        return st.one_of(st.sampled_from(CATEGORY_CELLS), texts)
    if kind == "text":
        return st.one_of(texts, texts, texts.map(lambda t: t + "\ud800"), texts.map(lambda t: "\udcff" + t),
                         st.sampled_from(["", "   ", "NA", "null", "\x00", BIG if big else MARKER]))
    return st.one_of(SCALARS.map(to_cell), texts, st.just("\ud800"))  # a column that is not read


def edit_table(draw, flavor: Flavor, role: str, table: Table, hadms: list[str]) -> Table:
    header, rows = list(table[0]), [list(r) for r in table[1]]
    kinds = ({flavor.id: "id", flavor.text: "text", flavor.category: "category"} if role == "notes" else
             {flavor.id: "id", flavor.code: "code", flavor.version: "version"})
    kinds.pop(None, None)
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["cell", "cell", "cell", "dup", "drop", "extra", "remove", "ragged"]))
        if edit == "cell" and rows:
            name = draw(st.sampled_from([*kinds, header[0]]))
            row = rows[draw(st.integers(0, len(rows) - 1))]
            if name in header and header.index(name) < len(row):
                row[header.index(name)] = draw(cell_values(kinds.get(name, "other"), hadms))
        elif edit == "dup" and rows:
            rows.insert(draw(st.integers(0, len(rows))), list(rows[draw(st.integers(0, len(rows) - 1))]))
        elif edit == "drop" and rows:
            del rows[draw(st.integers(0, len(rows) - 1))]
        elif edit == "extra":  # a new column, maybe with the name of one already there
            name = draw(st.sampled_from(["extra", "", "Notes", *kinds]))
            at = draw(st.integers(0, len(header)))
            cells = draw(st.lists(cell_values(kinds.get(name, "other"), hadms, big=False), min_size=1, max_size=3))
            header.insert(at, name)
            for i, row in enumerate(rows):
                row.insert(at, cells[i % len(cells)])
        elif edit == "ragged" and rows:  # one row with a field more or less than the header
            row = rows[draw(st.integers(0, len(rows) - 1))]
            if draw(st.booleans()) and len(row) > 1:
                row.pop()
            else:
                row.append(draw(cell_values("other", hadms)))
        elif edit == "remove" and (present := [name for name in kinds if name in header]):
            at = header.index(draw(st.sampled_from(present)))
            del header[at]
            for row in rows:
                del row[at:at + 1]  # a short row may not reach it
    return header, rows


def damage_bytes(draw, data: bytes) -> tuple[bytes, str | None]:
    damage = draw(st.sampled_from([None] * 7 + ["random", "truncate", "flip", "empty", "plain"]))
    if damage == "random":
        return draw(st.binary(min_size=1, max_size=400)), damage
    if damage == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))], damage
    if damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:], damage
    if damage == "empty":
        return b"", damage
    if damage == "plain":  # not compressed, under a .gz name
        return gzip.decompress(data), damage
    return data, None


def assert_prepare_mimic_contract(flavor: Flavor, bases: dict, data: st.DataObject) -> None:
    from mimic_fixture import SECRET

    from clem_icd.data.mimic import mimic_iii_recipe, mimic_iv_recipe, prepare_mimic

    base = bases[flavor]
    role = data.draw(st.sampled_from(["procedures", "diagnoses", "notes"]), label="table")
    hadms = sorted({row[table[0].index(flavor.id)] for table in base["tables"].values() for row in table[1]})
    table = edit_table(data.draw, flavor, role, base["tables"][role], hadms)
    crlf = data.draw(st.booleans())
    clean = csv_gz(table, crlf)
    written, damage = damage_bytes(data.draw, clean)
    version = data.draw(st.sampled_from([10, 10, 10, 9])) if flavor is MIMIC_IV else 9
    min_count = data.draw(st.integers(1, 3)) if flavor is MIMIC_IV else 0
    try:  # the table as it reads: damage that a gzip reader does not notice changes nothing
        same = damage == "plain" or gzip.decompress(written) == gzip.decompress(clean)
    except (OSError, EOFError, zlib.error):
        same = False

    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "in", Path(tmp) / "out"
        for name, relative in flavor.files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(written if name == role else base["gz"][name])
        tables = {**base["tables"], role: table}
        try:
            expected = reference_documents(flavor, tables, root, base["split_file"], base["splits"],
                                           version, min_count)
        except Failure as failure:
            expected = failure
        try:
            if flavor is MIMIC_IV:
                recipe, _ = mimic_iv_recipe(root, root, base["split_file"], icd_version=version,
                                            min_count=min_count)
            else:
                recipe, _ = mimic_iii_recipe(root, base["split_file"])
            prepared = prepare_mimic(recipe, out, bases["dictionary"])
        except ClemError as exc:
            message = str(exc)
            event(f"{role}: error" + (f" after damage {damage}" if damage else
                                      ", row" if ", row " in message else ", file"))
            assert_clean_error(message)
            assert SECRET not in message
            assert [p.name for p in Path(tmp).iterdir()] == ["in"], "output or temp folder left behind"
            if damage and message.startswith(str(root / flavor.files[role])):
                return  # the damaged file refused
            assert not damage or same, f"a damaged file ({damage}) and no error naming it: {message}"
            assert isinstance(expected, Failure), f"refused a good input: {message}"
            assert message.startswith(expected.path), (message, expected.path)
            if expected.row is not None:
                assert f", row {expected.row}, field '{expected.field}': " in message, (message, expected.row)
            elif expected.field is not None:  # a missing column
                assert expected.field in message, (message, expected.field)
            return
        event(f"{role}: dataset" + (f" despite damage {damage}" if damage else ""))
        assert same, f"prepared a dataset from a damaged file ({damage})"
        assert not isinstance(expected, Failure), f"no error for {expected.args}"
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["in", "out"]
        got = {r["id"]: (r["text"], r["codes"], r["split"])
               for r in PreparedDataset.load(out).documents.iter_rows(named=True)}
        assert got == expected
        assert prepared.manifest["counts"]["documents"] == len(expected)


@pytest.mark.shared_data
@fuzz(60)
@given(data=st.data())
def test_prepare_mimic_iv_writes_the_right_dataset_or_one_error(mimic_base, data):
    assert_prepare_mimic_contract(MIMIC_IV, mimic_base, data)


@pytest.mark.shared_data
@fuzz(40)
@given(data=st.data())
def test_prepare_mimic_iii_writes_the_right_dataset_or_one_error(mimic_base, data):
    assert_prepare_mimic_contract(MIMIC_III, mimic_base, data)


def write_mimic(flavor: Flavor, base: dict, root: Path, tables: dict[str, Table]) -> None:
    for role, relative in flavor.files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(csv_gz(tables[role]) if role in tables else base["gz"][role])


def with_cell(table: Table, column: str, value: str, *, last: bool = False, **match) -> tuple[Table, int]:
    """The table with `value` in `column` of the first (last) row matching `match`, and that row."""
    matching = [n for n, cells in enumerate(table[1], 1)
                if all(cells[table[0].index(c)] == v for c, v in match.items())]
    row = matching[-1 if last else 0]
    rows = [list(r) for r in table[1]]
    rows[row - 1][table[0].index(column)] = value
    return (table[0], rows), row


# Found by the properties above; kept as plain cases, through the command line.
MIMIC_IV_BAD = {
    # A note in a code cell (a shifted row): its text was quoted, over two lines.
    "note in a code cell": ("diagnoses", lambda t: with_cell(t, "icd_code", f"{MARKER} said:\nchest pain",
                                                             icd_version="10"),
                            "diagnoses_icd.csv.gz, row {row}, field 'icd_code': a value of 30 characters"),
    # An ICD-10 row after ICD-9 rows: its number was counted among the ICD-10 rows only.
    "bad admission id": ("diagnoses", lambda t: with_cell(t, "hadm_id", "x12", last=True, icd_version="10"),
                         "diagnoses_icd.csv.gz, row {row}, field 'hadm_id': not an integer"),
    # The note reader named the column 'id'.
    "bad note admission id": ("notes", lambda t: with_cell(t, "hadm_id", "x12", note_seq="1"),
                              "discharge.csv.gz, row {row}, field 'hadm_id': not an integer"),
    # Invalid UTF-8 in a code table: "cannot parse CSV (ComputeError)", no row.
    "code not UTF-8": ("procedures", lambda t: with_cell(t, "icd_code", "0DT\ud8000ZZ", icd_version="10"),
                       "procedures_icd.csv.gz, row {row}, field 'icd_code': not valid UTF-8"),
    # A row with a field more than the header (a stray comma): read silently, shifted.
    "a field too many": ("diagnoses", lambda t: ((t[0], [t[1][0] + ["I10"], *t[1][1:]]), 1),
                         "diagnoses_icd.csv.gz: a row has 6 fields, the header has 5"),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("case", list(MIMIC_IV_BAD))
def test_prepare_mimic_iv_bad_table_is_one_line_naming_row_and_field(case, mimic_base, tmp_path, run):
    role, damage, needle = MIMIC_IV_BAD[case]
    base = mimic_base[MIMIC_IV]
    table, row = damage(base["tables"][role])
    write_mimic(MIMIC_IV, base, tmp_path / "in", {role: table})
    out = tmp_path / "out"
    status, stdout, stderr = run("prepare", "mimic-iv", "--mimic-iv", tmp_path / "in", "--mimic-iv-note",
                                 tmp_path / "in", "--split-file", base["split_file"], "--out", out)
    assert status == 2 and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert needle.format(row=row) in stderr, stderr
    assert MARKER not in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.shared_data
def test_prepare_mimic_iii_huge_and_odd_notes(mimic_base, tmp_path, run):
    """A note of several MB, a field over 128 KiB, NUL, bidi marks, combining characters, a bare
    CR and U+2028 in note text, an uncompressed NOTEEVENTS.csv.gz: the documents are exact."""
    base = mimic_base[MIMIC_III]
    header, rows = base["tables"]["notes"]
    rows = [list(r) for r in rows]
    at = header.index("TEXT")
    odd = [MARKER + " fever " * 500_000, MARKER + "z" * 140_000, f"\x00{MARKER}\u200f\u202e",
           f"e\u0301\u0308 {MARKER}\rx\r\n\u2028y", f"{MARKER} \ufeff\U0001f468\u200d\U0001f469 ok"]
    for i, text in enumerate(odd):
        rows[i][at] = text
    notes = (header, rows)
    root = tmp_path / "in"
    write_mimic(MIMIC_III, base, root, {})
    (root / MIMIC_III.files["notes"]).write_bytes(gzip.decompress(csv_gz(notes)))  # not compressed
    out = tmp_path / "out"
    status, stdout, stderr = run("prepare", "mimic-iii", "--mimic-iii", root, "--split-file",
                                 base["split_file"], "--out", out)
    assert status == 0, stderr
    assert MARKER not in stdout + stderr
    expected = reference_documents(MIMIC_III, {**base["tables"], "notes": notes}, root, base["split_file"],
                                   base["splits"], 9, 0)
    got = {r["id"]: (r["text"], r["codes"], r["split"])
           for r in PreparedDataset.load(out).documents.iter_rows(named=True)}
    assert got == expected
    assert any(len(text) > 3_000_000 for text, _, _ in got.values())
