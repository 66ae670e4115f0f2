"""Reading input tables without surprises: clear errors naming file and row, streaming for
large note files, and checksums for manifests.

Error messages from parsers can quote cell values, which may be note text; they are never
passed on. Only the file, the row and the column are named.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from clem_icd.errors import ClemError, where

NOTE_BLOCK_BYTES = 8 << 20  # pyarrow CSV block: must exceed the longest record; memory grows with it


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def find_table(folder: Path, stem: str) -> Path:
    """`folder/stem.csv.gz` or `folder/stem.csv`, whichever exists."""
    for suffix in (".csv.gz", ".csv"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise ClemError(f"{folder / (stem + '.csv.gz')}: file not found")


def csv_columns(path: Path) -> list[str]:
    try:
        return pl.read_csv(path, n_rows=0, infer_schema_length=0).columns
    except Exception as exc:
        raise ClemError(f"{path}: not a readable CSV file ({exc.__class__.__name__})") from None


def require_columns(path: Path, present: list[str], required: list[str]) -> None:
    """Names only found columns that resemble a missing one: in a file without a header row,
    the "column names" are the first row's note text."""
    missing = [c for c in required if c not in present]
    if not missing:
        return
    close = [m for c in missing for m in difflib.get_close_matches(c, present, n=1, cutoff=0.75)]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ClemError(f"{path}: missing column(s) {', '.join(missing)} "
                    f"(the file has {len(present)} column(s){hint})")


def decode_utf8(path: Path, data: bytes) -> str:
    """Strict UTF-8 (a leading byte-order mark is dropped); the error names the 1-based line of
    the first invalid byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ClemError(f"{where(path)}, line {line}: not valid UTF-8 text") from None


def read_csv_strings(path: Path, columns: list[str]) -> pl.DataFrame:
    """Read `columns` of a (possibly gzipped) CSV as strings, with a 0-based `_row` index.

    For code tables: small enough to hold in memory even for MIMIC-IV (~5M rows)."""
    require_columns(path, csv_columns(path), columns)
    try:
        # All columns, then the wanted ones: with `columns=` polars ignores a row's extra fields,
        # so a row shifted by a stray comma would be read silently (pandas, in the reference
        # code, refuses it)
        frame = pl.read_csv(path, infer_schema_length=0).select(columns)
    except Exception as exc:
        # polars names neither the row nor the column of invalid UTF-8: find them (raises)
        for first, batch in _numbered(stream_csv_records(path, columns)):
            for column in columns:
                decode_utf8_column(batch.column(column), path, column, first)
        invalid = "utf-8" in str(exc).lower()  # then in a column not read here
        raise ClemError(f"{path}: " + ("not valid UTF-8 text" if invalid else
                                       f"cannot parse CSV ({exc.__class__.__name__})")) from None
    return frame.with_row_index("_row")


def _numbered(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, pa.RecordBatch]]:
    first = 0
    for batch in batches:
        yield first, batch
        first += batch.num_rows


def parse_int_column(frame: pl.DataFrame, column: str, path: Path, *, row_offset: int = 0) -> pl.Series:
    """Cast a string column of ids to Int64; a non-integer value is an error naming the row.

    Rows are reported 1-based as data rows (the header is not counted): by the `_row` index
    when the frame has one (it may have been filtered), else by position plus `row_offset`."""
    parsed = frame[column].str.strip_chars().cast(pl.Int64, strict=False)
    bad = parsed.is_null() & frame[column].is_not_null() & (frame[column].str.strip_chars() != "")
    if bad.any():
        position = int(bad.arg_max())
        row = (int(frame["_row"][position]) if "_row" in frame.columns else position) + 1 + row_offset
        raise ClemError(f"{where(path, row, column)}: not an integer")
    return parsed


def stream_csv_records(path: Path, columns: list[str], source=None) -> Iterator[pa.RecordBatch]:
    """Stream selected columns of a large (possibly gzipped) CSV as raw-bytes record batches.

    Values are read as binary so that invalid UTF-8 can be reported with its record number
    (see `decode_utf8_column`) rather than as a parser message that quotes the text.
    `source`, an open binary file of `path`, lets the caller follow progress with `tell()`."""
    require_columns(path, csv_columns(path), columns)
    # By content, not by name, as polars decides for csv_columns and the code tables: an
    # uncompressed .csv.gz (or a gzipped .csv) reads the same everywhere
    with open(path, "rb") as head:
        compression = "gzip" if head.read(2) == b"\x1f\x8b" else None
    try:
        stream = pa.input_stream(source if source is not None else str(path), compression=compression)
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=NOTE_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns,
                column_types={c: pa.binary() for c in columns},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            yield batch
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        if "straddl" in str(exc):  # one record is longer than a block
            raise ClemError(f"{path}: a record is longer than {NOTE_BLOCK_BYTES >> 20} MB, or a quote "
                            "is never closed") from None
        fields = re.search(r"Expected (\d+) columns, got (\d+)", str(exc))  # numbers only: the
        if fields:                                                           # rest quotes the row
            raise ClemError(f"{path}: a row has {fields[2]} fields, the header has {fields[1]}") from None
        raise ClemError(f"{path}: malformed or truncated CSV ({exc.__class__.__name__})") from None


def decode_utf8_column(column: pa.Array, path: Path, field: str, first_record: int) -> pa.Array:
    """Binary → string; invalid UTF-8 is an error naming the 1-based record number."""
    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:
        for offset, value in enumerate(column.to_pylist()):
            if value is None:
                continue
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise ClemError(
                    f"{where(path, first_record + offset + 1, field)}: not valid UTF-8 text"
                ) from None
        raise ClemError(f"{where(path, field=field)}: not valid UTF-8 text") from None
