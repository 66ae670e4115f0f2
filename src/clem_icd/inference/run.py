"""Coding a stream of note records: blocks of records in, output records out, in input order.

Records are taken in blocks (`block_size`), so that any number of notes is coded in bounded
memory while each block is still length-sorted into batches by the predictor."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from clem_icd.errors import ClemError
from clem_icd.inference.inputs import NoteRecord
from clem_icd.inference.predictor import NotePredictor, PredictOptions, choose_codes


class TfidfPredictor:
    """The TF-IDF baseline behind the same interface (no evidence, no truncation)."""

    def __init__(self, model, options: PredictOptions):
        if options.explain:
            raise ClemError("--explain needs a neural CLEM-ICD model; this is the TF-IDF baseline")
        from clem_icd.codes.systems import guess_icd10_system

        self.model, self.options = model, options
        self.threshold = model.threshold if options.threshold is None else options.threshold
        self.systems = [str(guess_icd10_system(code)) for code in model.codes]
        self.descriptions = model.descriptions or [""] * len(model.codes)

    def predict(self, texts: list[str]) -> list[dict]:
        results = []
        for row in self.model.predict_proba(texts):
            codes = [{"code": self.model.codes[j], "system": self.systems[j], "description": self.descriptions[j],
                      "probability": float(row[j])} for j in choose_codes(row, self.threshold, self.options.top_k)]
            results.append({"codes": codes, "truncated": False})
        return results


def make_predictor(model, options: PredictOptions):
    from clem_icd.baselines.tfidf import TfidfCoder

    return TfidfPredictor(model, options) if isinstance(model, TfidfCoder) else NotePredictor(model, options)


def code_records(predictor, records: Iterable[NoteRecord], *, block_size: int = 256,
                 progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Output records ({id, codes, truncated} or {id, error}) in the order of `records`."""
    done = 0
    block: list[NoteRecord] = []

    def flush() -> Iterator[dict]:
        nonlocal done
        texts = [r.text for r in block if r.error is None]
        results = iter(predictor.predict(texts) if texts else [])
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
