"""The finished notes' final codes as a file: JSON Lines (a record per note), CSV (a row per
final code) or a FHIR R4 Bundle (the coders' decisions, mapped by clem_icd.inference.fhir, the
one place that maps to FHIR). Written piece by piece: a backlog is never held whole."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime

from clem_icd.inference import fhir

FORMATS = ("jsonl", "csv", "fhir")
CSV_COLUMNS = ["id", "code", "system", "verdict", "principal", "status", "coded_by", "coded_at", "audited_by",
               "model_name", "model_version"]


def export_pieces(records: Iterator[dict], fmt: str) -> Iterator[str]:
    if fmt == "jsonl":
        for record in records:
            yield json.dumps(record, ensure_ascii=False) + "\n"
    elif fmt == "csv":
        yield _csv_line(CSV_COLUMNS)
        for record in records:
            for code in record["codes"]:
                yield _csv_line([record["id"], code["code"], code["system"], code["verdict"],
                                 "true" if code["principal"] else "false", record["status"], record["coded_by"],
                                 record["coded_at"], record["audited_by"] or "", record["model_name"] or "",
                                 record["model_version"] or ""])
    else:
        yield from _fhir_pieces(records)


def _csv_line(values: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _fhir_pieces(records: Iterator[dict]) -> Iterator[str]:
    header = fhir.bundle_header(datetime.now(UTC).isoformat(timespec="seconds"))
    opening = json.dumps({**header, "entry": []})
    yield opening[:-2]  # `..."entry": [` : the entries follow, one per code
    first = True
    for record in records:
        decisions = [{"code": c["code"], "system": c["system"], "decision": c["verdict"],
                      "description": c.get("description", ""), "probability": c.get("probability"),
                      "score": c.get("score"), "evidence": []} for c in record["codes"]]
        for entry in fhir.decision_entries(record["id"], decisions):
            yield ("" if first else ", ") + json.dumps(entry, ensure_ascii=False)
            first = False
    yield "]}\n"
