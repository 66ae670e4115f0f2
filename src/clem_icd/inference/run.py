"""Coding a stream of note records: blocks of records in, output records out, in input order.

Records are taken in blocks (`block_size`), so that any number of notes is coded in bounded
memory while each block is still length-sorted into batches by the predictor.

One interface for every model kind: a note predictor is a function texts -> one result per text,
{"codes": [{code, system, description, score[, probability][, evidence]}], "truncated": bool}
(clem_icd.choice.code_entry: `probability` only where the model's scores are probabilities), which a
loaded model gives with `model.note_predictor(options)` (the neural coder: NotePredictor; the
TF-IDF baseline: no evidence, --explain refused, never truncated). Both choose codes with the
one rule, clem_icd.choice.choose_codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from clem_icd.inference.inputs import NoteRecord

NotesPredictor = Callable[[list[str]], list[dict]]


def code_records(predict: NotesPredictor, records: Iterable[NoteRecord], *, block_size: int = 256,
                 progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Output records ({id, codes, truncated} or {id, error}) in the order of `records`;
    `predict` is a note predictor (`model.note_predictor(options)`)."""
    done = 0
    block: list[NoteRecord] = []

    def flush() -> Iterator[dict]:
        nonlocal done
        texts = [r.text for r in block if r.error is None]
        results = iter(predict(texts) if texts else [])
        for record in block:
            yield {"id": record.id, "error": record.error} if record.error else {"id": record.id, **next(results)}
        done += len(block)
        if progress:
            progress(done)
        block.clear()

    for record in records:
        block.append(record)
        if len(block) >= block_size:
            yield from flush()
    if block:
        yield from flush()
