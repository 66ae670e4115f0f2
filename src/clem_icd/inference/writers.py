"""Writing prediction records as JSONL, a FHIR R4 Bundle, or CodiEsp TSV files.

Output goes to stdout as it is produced, or to a file written beside its target and renamed
when complete (a failed run leaves no half-written file and keeps an older one).

- jsonl: one record per line, in input order.
- fhir: one Bundle of type collection (see clem_icd.inference.fhir).
- codiesp: the CodiEsp-D/P ranking format, `id<TAB>code` (lower case), each note's predicted
  codes best first.
- codiesp-x: the CodiEsp-X submission format, `id<TAB>start end<TAB>label<TAB>code` with label
  DIAGNOSTICO or PROCEDIMIENTO, one line per evidence span (needs --explain).
Records that could not be coded have no place in the TSV formats: they are reported on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from clem_icd.errors import ClemError
from clem_icd.inference import fhir

OUTPUT_FORMATS = ("jsonl", "fhir", "codiesp", "codiesp-x")


def check_format(format: str) -> None:
    if format not in OUTPUT_FORMATS:
        raise ClemError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got '{format}'")


class RecordWriter:
    """`write(record)` in input order, then `close()` (or use it as a context manager)."""

    def __init__(self, out: Path | None, format: str, stream: TextIO | None = None):
        check_format(format)
        self.format = format
        self.out = out
        self._tmp: str | None = None
        if out is None:
            self._handle = stream or sys.stdout
        else:
            out = Path(out)
            if out.is_dir():
                raise ClemError(f"{out}: is a folder (--out takes a file name)")
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.fchmod(fd, 0o644)
            self._handle = os.fdopen(fd, "w", encoding="utf-8")
        self._entries = 0
        if format == "fhir":
            header = json.dumps(fhir.bundle_header(datetime.now(UTC).isoformat(timespec="seconds")))
            self._handle.write(header[:-1] + ', "entry": [\n')

    def write(self, record: dict) -> None:
        if self.format == "jsonl":
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.format == "fhir":
            for entry in fhir.bundle_entries(record):
                self._handle.write((",\n" if self._entries else "") + json.dumps(entry, ensure_ascii=False))
                self._entries += 1
        elif "error" in record:
            return
        elif self.format == "codiesp":
            for code in record["codes"]:
                self._handle.write(f"{record['id']}\t{code['code'].lower()}\n")
        else:
            for code in record["codes"]:
                label = "PROCEDIMIENTO" if code.get("system") in fhir.PROCEDURE_SYSTEMS else "DIAGNOSTICO"
                for span in code.get("evidence", []):
                    self._handle.write(f"{record['id']}\t{span['start']} {span['end']}\t{label}\t{code['code'].lower()}\n")
        if self.out is None:
            self._handle.flush()  # a reader of a pipe sees each record as soon as it is coded

    def close(self, success: bool = True) -> None:
        if self.format == "fhir" and success:
            self._handle.write("\n]}\n")
        if self.out is None:
            self._handle.flush()
            return
        self._handle.close()
        if success:
            os.replace(self._tmp, self.out)
        else:
            Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)
