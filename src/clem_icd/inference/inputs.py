"""Notes to code, read lazily from text files, folders, JSONL, CSV/TSV, Parquet or stdin.

Every record comes out as a `NoteRecord`; a record that cannot be coded (empty, not UTF-8,
binary, missing field, duplicate id, ...) carries an `error` naming where it is - never the
note's text - and the others are coded regardless.

- A folder: every regular, non-hidden file in it (sorted), one note each, id = file name
  without its `.txt` suffix.
- `*.jsonl` / `*.ndjson`: one JSON object per line with the id and text fields.
- `*.csv` / `*.tsv`: a header row naming the id and text columns (also gzipped: `*.csv.gz`,
  e.g. MIMIC's NOTEEVENTS.csv.gz with --id-field ROW_ID --text-field TEXT).
- `*.parquet`: id and text columns.
- Any other file: one note, id = file name without its `.txt` suffix.
- `-` (or no input with data on stdin): JSONL when its first non-blank line is a JSON object,
  otherwise the whole of stdin is one note with id `stdin`.

An id read from a field (JSONL, CSV/TSV, Parquet) is a string or an integer, of at most 256
characters, without line breaks, tabs or other control characters: it is written into output
lines and messages as it is.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clem_icd.data.text import is_encodable
from clem_icd.errors import ClemError

TABLE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_BINARY_PROBE = 8192
_MAX_FIELD = 1 << 30  # characters in one CSV field
# An id is echoed in output lines (TSV formats) and in error messages (duplicate id): one line of
# reasonable length. A longer one is most likely a note in the id column.
_MAX_ID = 256


@dataclass
class NoteRecord:
    id: str | None
    text: str | None = None
    error: str | None = None


def _decode(data: bytes, where: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, error) for the bytes of one note."""
    if b"\x00" in data[:_BINARY_PROBE]:
        return None, f"{where}: binary data, not a text note"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"{where}: not valid UTF-8 (byte {exc.start})"
    return text, None


def _checked(record_id: str | None, text: str | None, where: str) -> NoteRecord:
    if text is None:
        return NoteRecord(record_id, error=f"{where}: no text")
    if not text.strip():
        return NoteRecord(record_id, error=f"{where}: empty note")
    return NoteRecord(record_id, text)


def _note_id(path: Path) -> str:
    return path.stem if path.suffix.lower() == ".txt" else path.name


def _text_file(path: Path, record_id: str) -> NoteRecord:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return NoteRecord(record_id, error=f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})")
    text, error = _decode(data, str(path))
    return NoteRecord(record_id, error=error) if error else _checked(record_id, text, str(path))


def _id_value(value, where: str) -> tuple[str | None, str | None]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"{where}: missing id"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"{where}: the id must be a string or an integer"
    value = str(value)
    if not is_encodable(value):  # a JSON "\ud800" escape: no output can be written with it
        return None, f"{where}: not valid Unicode"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):  # would break a line
        return None, f"{where}: the id holds a line break, tab or other control character"
    if len(value) > _MAX_ID:
        return None, f"{where}: the id is longer than {_MAX_ID} characters"
    return value, None


def _jsonl_lines(lines: Iterator[bytes], name: str, id_field: str, text_field: str) -> Iterator[NoteRecord]:
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{name}, line {number}"
        try:
            item = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError as exc:
            yield NoteRecord(None, error=f"{where}: not valid UTF-8 (byte {exc.start})")
            continue
        except (ValueError, RecursionError):  # also a >4300-digit number or deeply nested arrays
            yield NoteRecord(None, error=f"{where}: not valid JSON")
            continue
        if not isinstance(item, dict):
            yield NoteRecord(None, error=f"{where}: not a JSON object")
            continue
        if id_field not in item:
            yield NoteRecord(None, error=f"{where}: missing field '{id_field}'")
            continue
        record_id, error = _id_value(item[id_field], f"{where}, field '{id_field}'")
        if error:
            yield NoteRecord(None, error=error)
        elif text_field not in item:
            yield NoteRecord(record_id, error=f"{where}: missing field '{text_field}'")
        elif not isinstance(item[text_field], str):
            yield NoteRecord(record_id, error=f"{where}, field '{text_field}': not a string")
        elif not is_encodable(item[text_field]):  # a "\ud800" escape: no tokenizer can take it
            yield NoteRecord(record_id, error=f"{where}, field '{text_field}': not valid Unicode")
        else:
            yield _checked(record_id, item[text_field], f"{where}, field '{text_field}'")


def _kind(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return TABLE_SUFFIXES.get(suffixes[-1]) if suffixes else None


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _delimited(path: Path, delimiter: str, id_field: str, text_field: str) -> Iterator[NoteRecord]:
    # Lines are decoded with surrogateescape so that one bad byte spoils only its own row.
    import io

    # A long note is no error: csv's default limit on a field is only 128 KiB.
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD))
    with io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            yield NoteRecord(None, error=f"{path}: empty file, no header row")
            return
        missing = [f for f in (id_field, text_field) if f not in header]
        if missing:
            # only a count: without a header row, the "column names" are the first note's text
            yield NoteRecord(None, error=f"{path}: no column '{missing[0]}' in the header "
                                         f"(the header has {len(header)} column(s))")
            return
        id_at, text_at = header.index(id_field), header.index(text_field)
        for number, row in enumerate(reader, start=1):
            where = f"{path}, row {number}"
            if len(row) != len(header):
                yield NoteRecord(None, error=f"{where}: {len(row)} fields, the header has {len(header)}")
                continue
            if not is_encodable(row[id_at]):  # invalid bytes, kept as lone surrogates
                yield NoteRecord(None, error=f"{where}, field '{id_field}': not valid UTF-8")
                continue
            record_id, error = _id_value(row[id_at], f"{where}, field '{id_field}'")
            if error:
                yield NoteRecord(None, error=error)
                continue
            text = row[text_at]
            if not is_encodable(text):
                yield NoteRecord(record_id, error=f"{where}, field '{text_field}': not valid UTF-8")
                continue
            yield _checked(record_id, text, f"{where}, field '{text_field}'")


def _parquet(path: Path, id_field: str, text_field: str) -> Iterator[NoteRecord]:
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
    except Exception:  # pyarrow raises several kinds for a file that is not Parquet
        yield NoteRecord(None, error=f"{path}: not a readable Parquet file")
        return
    names = source.schema_arrow.names
    missing = [f for f in (id_field, text_field) if f not in names]
    if missing:
        yield NoteRecord(None, error=f"{path}: no column '{missing[0]}' (columns: {', '.join(names[:20])})")
        return
    number = 0
    for batch in source.iter_batches(columns=[id_field, text_field], batch_size=1024):
        for record_id, text in zip(_values(batch.column(0)), _values(batch.column(1))):
            number += 1
            where = f"{path}, row {number}"
            if isinstance(record_id, _NotUTF8):
                yield NoteRecord(None, error=f"{where}, field '{id_field}': not valid UTF-8")
                continue
            record_id, error = _id_value(record_id, f"{where}, field '{id_field}'")
            if error:
                yield NoteRecord(None, error=error)
                continue
            if isinstance(text, bytes):
                text, error = _decode(text, f"{where}, field '{text_field}'")
                if error:
                    yield NoteRecord(record_id, error=error)
                    continue
            if text is not None and not isinstance(text, str):
                yield NoteRecord(record_id, error=f"{where}, field '{text_field}': not text")
                continue
            yield _checked(record_id, text, f"{where}, field '{text_field}'")


class _NotUTF8(bytes):
    """A value of a Parquet string column that is not UTF-8 (a writer that does not check); as
    text, it is reported like the bytes of a binary column."""


def _values(column) -> list:
    """`column.to_pylist()`, which raises UnicodeDecodeError for invalid UTF-8 in a string
    column: such values come out as `_NotUTF8` bytes, to be reported with their row."""
    import pyarrow as pa

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column.to_pylist()
    try:
        column.validate(full=True)
        return column.to_pylist()
    except pa.ArrowInvalid:
        raw = column.cast(pa.large_binary()).to_pylist()  # string to binary: no UTF-8 check
    values = []
    for value in raw:
        try:
            values.append(value if value is None else value.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(_NotUTF8(value))
    return values


def _stdin(stream, id_field: str, text_field: str) -> Iterator[NoteRecord]:
    data = stream.read()
    first = next((line for line in data.splitlines() if line.strip()), b"")
    try:
        looks_jsonl = isinstance(json.loads(first), dict)
    except (ValueError, UnicodeDecodeError):
        looks_jsonl = False
    if looks_jsonl:
        yield from _jsonl_lines(iter(data.splitlines()), "stdin", id_field, text_field)
        return
    text, error = _decode(data, "stdin")
    yield NoteRecord("stdin", error=error) if error else _checked("stdin", text, "stdin")


def _records_of(path: str, id_field: str, text_field: str, stdin) -> Iterator[NoteRecord]:
    if path == "-":
        yield from _stdin(stdin, id_field, text_field)
        return
    source = Path(path)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        for file in files:
            yield _text_file(file, _note_id(file))
        return
    if not source.exists():
        raise ClemError(f"{source}: no such file or folder")
    kind = _kind(source)
    try:
        if kind == "jsonl":
            with _open_bytes(source) as handle:
                yield from _jsonl_lines(handle, str(source), id_field, text_field)
        elif kind in ("csv", "tsv"):
            yield from _delimited(source, "," if kind == "csv" else "\t", id_field, text_field)
        elif kind == "parquet":
            yield from _parquet(source, id_field, text_field)
        else:
            yield _text_file(source, _note_id(source))
    except (OSError, EOFError, zlib.error):  # a corrupt or truncated .gz archive, found mid-read
        yield NoteRecord(None, error=f"{source}: cannot read the rest of the file (corrupt or truncated)")
    except csv.Error as exc:  # the parser's message is about the row, never quotes it
        yield NoteRecord(None, error=f"{source}: malformed {kind.upper()} ({exc})")


def read_notes(inputs: list[str], *, id_field: str = "id", text_field: str = "text",
               stdin=None) -> Iterator[NoteRecord]:
    """Records of all inputs in order. A repeated id is an error for every later record
    that carries it (the first is coded)."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    seen: set[str] = set()
    for path in inputs or ["-"]:
        for record in _records_of(path, id_field, text_field, stdin):
            if record.id is not None and record.error is None:
                if record.id in seen:
                    record = NoteRecord(record.id, error=f"duplicate id '{record.id}' (an earlier record has it)")
                else:
                    seen.add(record.id)
            yield record


def count_notes(inputs: list[str]) -> int | None:
    """How many records the inputs hold, when that is cheap to know (files and folders of
    single notes, JSONL line counts); None otherwise (stdin, CSV, Parquet)."""
    if not inputs:
        return None
    total = 0
    for path in inputs:
        source = Path(path)
        if path == "-" or not source.exists():
            return None
        if source.is_dir():
            total += sum(1 for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        elif _kind(source) == "jsonl":
            with _open_bytes(source) as handle:
                total += sum(1 for line in handle if line.strip())
        elif _kind(source) is not None:
            return None
        else:
            total += 1
    return total
