"""The finished notes as training data for `clem-icd prepare feedback`: each note's final codes
(from `WorkStore.export`, so the labels are by construction what `work export` hands out) with
its text, which the export leaves out. Reading only: nothing is marked exported or purged, since
preparing a dataset is not handing the codes on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import select

from clem_icd.data.feedback import FeedbackNote
from clem_icd.workbench.db import Database, current_revision
from clem_icd.workbench.models import Note
from clem_icd.workbench.store import WorkStore

CHUNK = 200


def source_record(db: Database, statuses: tuple[str, ...]) -> dict:
    """For the manifest: which database (without its password), at which schema revision, when."""
    return {"name": db.name, "backend": db.url.get_backend_name(), "revision": current_revision(db),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"), "statuses": list(statuses)}


def finished_notes(db: Database, statuses: tuple[str, ...] = ("coded", "audited")) -> Iterator[FeedbackNote]:
    """A `FeedbackNote` per note in `statuses`, in queue order; text None where it was purged."""
    chunk: list[dict] = []
    for record in WorkStore(db).export(statuses, mark=False):
        chunk.append(record)
        if len(chunk) == CHUNK:
            yield from _with_text(db, chunk)
            chunk = []
    yield from _with_text(db, chunk)


def _with_text(db: Database, records: list[dict]) -> Iterator[FeedbackNote]:
    if not records:
        return
    with db.read() as session:
        texts = dict(session.execute(select(Note.id, Note.text).where(Note.id.in_([r["id"] for r in records]))).all())
    for record in records:
        yield FeedbackNote(id=record["id"], text=texts.get(record["id"]),
                           codes=[(c["code"], c["system"] or "") for c in record["codes"]])
