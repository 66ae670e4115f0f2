"""Feedback data: the notes the workbench's coders finished, with their final codes as labels.

The database is read in clem_icd.workbench.feedback (this layer may not know the workbench);
what arrives here is one `FeedbackNote` per finished note, in queue order, and this module makes
of them a prepared dataset as `custom.py` does of a file: codes normalised per code system, a
split by iterative multi-label stratification with a fixed seed, the folder published
atomically by `DatasetWriter`.

- Labels: the final codes of each note (accepted + added of its latest decision). A note whose
  every suggestion was rejected and nothing added stays in, as a note without codes: the coder
  said it has none of them, which is worth learning.
- A note whose text was purged (`work export --purge-text-after-export`) has nothing to learn
  from: it is skipped and counted (`counts.notes_text_purged` in the manifest), never silently.
- The split is stratified over the notes prepared now. Run again after more notes are coded,
  and a note may land in another split than before: a model tuned on one preparation should be
  compared with another on a test split both agree on, not on the new one.

Messages name the database, the note id and the code, never the note text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from clem_icd.codes import CodeDictionary, CodeSystem, guess_icd10_system, normalize_code
from clem_icd.data.custom import SPLIT_FRACTIONS, WRITE_BATCH, show
from clem_icd.data.dataset import DatasetWriter, Prepared
from clem_icd.data.split import SPLIT_METHOD, stratified_split
from clem_icd.data.text import is_encodable
from clem_icd.errors import ClemError


@dataclass
class FeedbackNote:
    id: str
    text: str | None  # None once purged
    codes: list[tuple[str, str]]  # (code, system as the workbench stored it; "" when unknown)


def code_of(place: str, code: str, system: str) -> tuple[str, CodeSystem]:
    """The canonical code and its system. A code added without a system (the workbench allows
    that) is told apart as ICD-10-CM or ICD-10-PCS by its shape, as `custom --code-system auto`."""
    try:
        known = CodeSystem(system) if system else guess_icd10_system(code)
    except ValueError:
        raise ClemError(f"{place}: code {show(code)} has system {show(system)}, not one of "
                        f"{', '.join(s.value for s in CodeSystem)}") from None
    try:
        return normalize_code(code, known), known
    except ValueError:
        raise ClemError(f"{place}: {show(code)} is not a valid {known.value} code") from None


def prepare_feedback(notes: Iterable[FeedbackNote], out: Path, *, where: str, database: dict,
                     options: dict | None = None, seed: int = 42, overwrite: bool = False) -> Prepared:
    """Write the prepared dataset to `out`. `where` names the source in messages (`--db NAME`);
    `database` (name, revision, export time) and `options` go into the manifest as they are."""
    kept: list[FeedbackNote] = []
    labels: list[list[str]] = []
    code_systems: dict[str, CodeSystem] = {}
    finished = purged = 0
    for note in notes:
        finished += 1
        if note.text is None:
            purged += 1
            continue
        place = f"{where}: note '{note.id}'"
        if not note.text.strip():
            raise ClemError(f"{place}: empty text")
        if not is_encodable(note.text):
            raise ClemError(f"{place}: text is not valid Unicode (lone surrogate)")
        codes: dict[str, None] = {}  # an ordered set: two spellings of one code are one label
        for raw, system in note.codes:
            code, known = code_of(place, raw, system)
            if code_systems.setdefault(code, known) is not known:
                raise ClemError(f"{place}: code {show(code)} is {known.value} here and "
                                f"{code_systems[code].value} on an earlier note")
            codes[code] = None
        kept.append(note)
        labels.append(list(codes))
    if not finished:
        raise ClemError(f"{where}: no finished notes to learn from (none coded or audited with these options)")
    if not kept:
        raise ClemError(f"{where}: all {finished} finished note(s) had their text purged; nothing to learn from")

    splits = stratified_split(labels, seed, SPLIT_FRACTIONS)
    with DatasetWriter(out, overwrite=overwrite) as writer:
        for start in range(0, len(kept), WRITE_BATCH):
            batch = slice(start, start + WRITE_BATCH)
            writer.write([n.id for n in kept[batch]], [n.text for n in kept[batch]], labels[batch], splits[batch])
        manifest = writer.finish(
            code_systems=code_systems,
            dictionary=CodeDictionary(),
            manifest={
                "source": "feedback",
                "options": {**(options or {}), "split_method": SPLIT_METHOD, "seed": seed,
                            "split_fractions": list(SPLIT_FRACTIONS)},
                "database": database,
                "inputs": [],
                "counts": {"notes_finished": finished, "notes_text_purged": purged},
            },
        )
    return Prepared(manifest, writer.report)
