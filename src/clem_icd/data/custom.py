"""Custom data: one table of notes with codes, as CSV, TSV, JSONL (.jsonl / .ndjson) or Parquet.

Columns (names configurable): id, text, codes, and optionally split.
- codes: a list of strings (JSONL array, Parquet list) or one string separated by `;` (or another
  separator); empty or null means no codes. Codes are normalised per code system; with `auto`,
  each code is told apart as ICD-10-CM or ICD-10-PCS by its shape.
- "Long format" is accepted: several rows with the same id and the same text are one document
  whose codes are the union in order of first appearance. The same id with a different text or
  a different split is an error naming both rows.
- split: train / val / test (dev, valid, validation are read as val). Without a split column, a
  split is made by iterative multi-label stratification with a fixed seed (see `split.py`).

CSV and TSV are read with the usual quoting rules (a field with the separator, a quote or a
newline is quoted, as pandas and polars write it), every column as a string so that ids like
007 keep their zeros. Everything is read into memory: custom sets are expected to have up to
some 100k notes. Messages name the file, the row (1-based data row: the header is not counted;
for JSONL the line) and the field, never the note text.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from clem_icd.codes import CodeDictionary, CodeSystem, guess_icd10_system, normalize_code
from clem_icd.data.dataset import DatasetWriter, Prepared, canonical_split, input_record
from clem_icd.data.io import decode_utf8, require_columns
from clem_icd.data.split import SPLIT_METHOD, stratified_split
from clem_icd.data.text import is_encodable
from clem_icd.errors import ClemError, where

INPUT_FORMAT_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
CODE_SYSTEMS = ("auto", *(system.value for system in CodeSystem))
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
WRITE_BATCH = 10_000
# A value shown in a message must look like a code: one short token. Anything longer could be
# note text put in the wrong column.
_SHOWABLE = re.compile(r"[A-Za-z0-9.\-]{1,10}")


@dataclass
class Columns:
    id: str = "id"
    text: str = "text"
    codes: str = "codes"
    split: str | None = None  # None: the column 'split' when the file has one


@dataclass
class Document:
    row: int  # first row of this id
    text: str
    split: str | None
    codes: dict[str, None] = field(default_factory=dict)  # an ordered set


def show(value: str) -> str:
    return f"'{value}'" if _SHOWABLE.fullmatch(value) else f"a value of {len(value)} characters"


# ---------------------------------------------------------------- reading the file into rows


def read_rows(path: Path, columns: Columns) -> tuple[list[tuple[int, tuple]], str | None]:
    """(row number, (id, text, codes, split)) for every row, and the split column used."""
    path = Path(path)
    if not path.is_file():
        raise ClemError(f"{path}: file not found")
    kind = INPUT_FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise ClemError(f"{path}: unsupported file type (use {', '.join(INPUT_FORMAT_BY_SUFFIX)})")
    if kind == "jsonl":
        records = _read_jsonl(path)
        present = list(dict.fromkeys(key for _, record in records for key in record))
    else:
        frame = _read_table(path, kind)
        present = frame.columns
    split_column = columns.split or ("split" if "split" in present else None)
    wanted = [columns.id, columns.text, columns.codes] + ([split_column] if split_column else [])
    require_columns(path, present, wanted)
    if kind == "jsonl":
        rows = [(number, tuple(_field(path, number, record, name) for name in wanted))
                for number, record in records]
    else:
        rows = list(enumerate(frame.select(wanted).iter_rows(), start=1))
    if not rows:
        raise ClemError(f"{path}: no data rows")
    if not split_column:
        rows = [(number, (*values, None)) for number, values in rows]
    return rows, split_column


def _read_table(path: Path, kind: str) -> pl.DataFrame:
    try:
        if kind == "parquet":
            return pl.read_parquet(path)
        data = path.read_bytes()
        decode_utf8(path, data)  # polars would replace or reject bad bytes without a line number
        return pl.read_csv(io.BytesIO(data), separator="\t" if kind == "tsv" else ",",
                           infer_schema_length=0)
    except ClemError:
        raise
    except Exception as exc:  # parser messages can quote cells, i.e. note text
        raise ClemError(f"{path}: cannot read {kind.upper()} ({exc.__class__.__name__})") from None


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    records = []
    for number, line in enumerate(decode_utf8(path, path.read_bytes()).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # also a >4300-digit number or deeply nested arrays
            raise ClemError(f"{where(path, number)}: not valid JSON") from None
        if not isinstance(record, dict):
            raise ClemError(f"{where(path, number)}: expected a JSON object")
        records.append((number, record))
    return records


def _field(path: Path, number: int, record: dict, name: str):
    if name not in record:
        raise ClemError(f"{where(path, number, name)}: missing")
    return record[name]


# ---------------------------------------------------------------- checking and merging rows


@dataclass
class CustomReader:
    """Turns rows into documents: checks each value, normalises codes, merges long format."""

    path: Path
    columns: Columns
    split_column: str | None
    code_separator: str = ";"
    code_system: str = "auto"
    documents: dict[str, Document] = field(default_factory=dict)
    code_systems: dict[str, CodeSystem] = field(default_factory=dict)
    merged_rows: int = 0

    def add(self, number: int, values: tuple) -> None:
        raw_id, raw_text, raw_codes, raw_split = values
        doc_id = self._id(number, raw_id)
        text = self._text(number, raw_text)
        split = self._split(number, raw_split)
        codes = [self._code(number, raw) for raw in self._code_strings(number, raw_codes)]
        document = self.documents.get(doc_id)
        if document is None:
            document = self.documents[doc_id] = Document(row=number, text=text, split=split)
        else:
            self._check_same(number, document, text, split)
            self.merged_rows += 1
        document.codes.update(dict.fromkeys(codes))

    def _where(self, number: int, name: str) -> str:
        return where(self.path, number, name)

    def _check_same(self, number: int, document: Document, text: str, split: str | None) -> None:
        if text != document.text:
            raise ClemError(f"{self._where(number, self.columns.text)}: the id of this row is also on "
                            f"row {document.row} with a different text (one id, one text)")
        if split != document.split:
            raise ClemError(f"{self._where(number, self.split_column)}: the id of this row is also on "
                            f"row {document.row} with a different split")

    def _id(self, number: int, value) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value.strip():
            raise ClemError(f"{self._where(number, self.columns.id)}: missing or not a string/integer id")
        return value.strip()

    def _text(self, number: int, value) -> str:
        if not isinstance(value, str):
            raise ClemError(f"{self._where(number, self.columns.text)}: missing or not a string")
        if not value.strip():
            raise ClemError(f"{self._where(number, self.columns.text)}: empty text")
        if not is_encodable(value):  # a JSON "\ud800" escape: a lone surrogate, Parquet cannot store it
            raise ClemError(f"{self._where(number, self.columns.text)}: not valid Unicode (lone surrogate)")
        return value

    def _split(self, number: int, value) -> str | None:
        if self.split_column is None:
            return None
        split = canonical_split(value) if isinstance(value, str) else None
        if split is None:
            raise ClemError(f"{self._where(number, self.split_column)}: missing or unknown split "
                            "(expected train, val or test; dev and validation mean val)")
        return split

    def _code_strings(self, number: int, value) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            parts = value.split(self.code_separator)
        elif isinstance(value, list) and all(isinstance(v, str) or v is None for v in value):
            parts = [v for v in value if v is not None]
        else:
            raise ClemError(f"{self._where(number, self.columns.codes)}: expected a list of strings "
                            f"or a '{self.code_separator}'-separated string")
        return [part.strip() for part in parts if part.strip()]

    def _code(self, number: int, raw: str) -> str:
        try:
            system = guess_icd10_system(raw) if self.code_system == "auto" else CodeSystem(self.code_system)
            code = normalize_code(raw, system)
        except ValueError:
            expected = "ICD-10-CM or ICD-10-PCS" if self.code_system == "auto" else self.code_system
            raise ClemError(f"{self._where(number, self.columns.codes)}: {show(raw)} is not "
                            f"a valid {expected} code") from None
        self.code_systems[code] = system
        return code


# ---------------------------------------------------------------- preparing the dataset


def prepare_custom(path: Path, out: Path, *, columns: Columns | None = None, code_separator: str = ";",
                   code_system: str = "auto", seed: int = 42, d_icd_diagnoses: Path | None = None,
                   d_icd_procedures: Path | None = None, overwrite: bool = False) -> Prepared:
    """Write the prepared dataset to `out`; returns its manifest and code check."""
    path, columns = Path(path), columns or Columns()
    if code_system not in CODE_SYSTEMS:
        raise ClemError(f"--code-system must be one of {', '.join(CODE_SYSTEMS)}, got '{code_system}'")
    if not code_separator:
        raise ClemError("--code-separator must not be empty")
    if columns.codes == columns.text:
        raise ClemError("--codes-column and --text-column name the same column")
    dictionary = CodeDictionary.from_files(d_icd_diagnoses, d_icd_procedures)
    rows, split_column = read_rows(path, columns)
    reader = CustomReader(path, columns, split_column, code_separator, code_system)
    for number, values in rows:
        reader.add(number, values)

    ids = list(reader.documents)
    documents = [reader.documents[i] for i in ids]
    if split_column:
        splits = [d.split for d in documents]
        split_options = {"split_method": f"column '{split_column}'"}
    else:
        splits = stratified_split([list(d.codes) for d in documents], seed, SPLIT_FRACTIONS)
        split_options = {"split_method": SPLIT_METHOD, "seed": seed, "split_fractions": list(SPLIT_FRACTIONS)}

    with DatasetWriter(out, overwrite=overwrite) as writer:
        for start in range(0, len(ids), WRITE_BATCH):
            batch = slice(start, start + WRITE_BATCH)
            writer.write(ids[batch], [d.text for d in documents[batch]],
                         [list(d.codes) for d in documents[batch]], splits[batch])
        manifest = writer.finish(
            code_systems=reader.code_systems,
            dictionary=dictionary,
            manifest={
                "source": "custom",
                "options": {
                    "format": INPUT_FORMAT_BY_SUFFIX[path.suffix.lower()],
                    "columns": {"id": columns.id, "text": columns.text, "codes": columns.codes,
                                "split": split_column},
                    "code_separator": code_separator,
                    "code_system": code_system,
                    **split_options,
                },
                "inputs": [input_record(p) for p in (path, d_icd_diagnoses, d_icd_procedures) if p],
                "counts": {"rows": len(ids) + reader.merged_rows,
                           "rows_merged_into_earlier_rows": reader.merged_rows},
            },
        )
    return Prepared(manifest, writer.report)
