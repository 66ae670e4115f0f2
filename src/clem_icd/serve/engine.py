"""The model behind the service: one loaded model, a predictor per set of request options, the
token length of each note (what the batcher budgets by) and the facts `GET /v1/model` shows.

Runs in the inference worker's thread; nothing here knows about HTTP."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from clem_icd.data.io import sha256_file
from clem_icd.errors import ClemError
from clem_icd.inference.predictor import NotePredictor, PredictOptions
from clem_icd.version import __version__

# A short note the service codes once before it says it is ready: the first forward pass pays
# for lazy initialisation (kernels, allocator, tokenizer caches) that no user request should.
WARM_UP_TEXT = "Patient admitted with chest pain and shortness of breath. Discharged home in stable condition."


@dataclass(frozen=True)
class RequestOptions:
    """What a request may choose; requests with equal options can share a forward pass."""

    top_k: int | None = None
    threshold: float | None = None
    explain: str | None = None


class CodingEngine:
    """`prepare(texts)` (tokenise once, in the request's thread) then `code(options, texts,
    prepared)` (in the inference worker): the same result objects `clem-icd predict` writes."""

    def __init__(self, model, model_dir: Path, *, max_batch_tokens: int | None, precision: str = "auto"):
        self.model = model
        self.model_dir = Path(model_dir)
        self.max_batch_tokens = max_batch_tokens
        self.precision = precision
        self.neural = hasattr(model, "tokenizer")
        self._predictors: dict[RequestOptions, object] = {}
        self._card: dict | None = None
        self._version: str | None = None
        # Requests tokenise in the server's thread pool; one at a time, since a fast tokenizer
        # is not safe to share between threads (transformers may reset its truncation state).
        self._tokenizing = threading.Lock()

    # ------------------------------------------------------------------ options

    def predictor(self, options: RequestOptions):
        """The predictor for these options, checked (a ClemError names the bad option)."""
        if options not in self._predictors:
            settings = PredictOptions(top_k=options.top_k, threshold=options.threshold, explain=options.explain,
                                      max_batch_tokens=self.max_batch_tokens, precision=self.precision)
            if self.neural:
                self._predictors[options] = NotePredictor(self.model, settings)
            else:
                self._predictors[options] = self.model.note_predictor(settings)
        return self._predictors[options]

    # ------------------------------------------------------------------ coding

    def prepare(self, texts: list[str]) -> tuple[list | None, list[int]]:
        """(encoded notes or None, tokens the model reads per note). The TF-IDF baseline reads
        whole notes at a cost that does not grow with padding: every note counts as 1."""
        if not self.neural:
            return None, [1] * len(texts)
        predictor = self.predictor(RequestOptions())
        with self._tokenizing:
            notes = predictor.encode(texts)
        return notes, [predictor.sequence_length(note) for note in notes]

    def code(self, options: RequestOptions, texts: list[str], prepared: list | None) -> list[dict]:
        predictor = self.predictor(options)
        if self.neural:
            return predictor.predict(texts, notes=prepared)
        return predictor(texts)

    # ------------------------------------------------------------------ facts

    @property
    def codes(self) -> list[str]:
        return list(self.model.codes)

    @property
    def systems(self) -> list[str]:
        if self.neural:
            return list(self.model.config.code_systems or [""] * len(self.codes))
        return list(self.model.code_systems)

    @property
    def descriptions(self) -> list[str]:
        descriptions = self.model.config.descriptions if self.neural else self.model.descriptions
        return list(descriptions or [""] * len(self.codes))

    @property
    def score_kind(self) -> str:
        """What the scores of the codes are: "probability" or "rank score" (clem_icd.choice)."""
        return self.model.score_kind

    @property
    def model_version(self) -> str:
        """A fingerprint of the model folder's files (names and contents): suggestions name the
        exact model that made them, and a retrained model in the same folder is another version."""
        if self._version is None:
            digest = hashlib.sha256()
            for path in sorted(p for p in self.model_dir.rglob("*") if p.is_file()):
                digest.update(f"{path.relative_to(self.model_dir)}\0{sha256_file(path)}\0".encode())
            self._version = digest.hexdigest()[:16]
        return self._version

    @property
    def max_length(self) -> int | None:
        return self.model.config.max_length if self.neural else None

    def card(self) -> dict:
        """Model card facts: what it is, how many codes, its threshold and its metrics."""
        if self._card is None:
            self._card = self._read_card()
        return self._card

    def _read_card(self) -> dict:
        if self.neural:
            config = self.model.config
            # A local encoder folder is shown by its name: clients need not learn the server's paths.
            encoder = Path(config.encoder).name if Path(config.encoder).exists() else config.encoder
            kind = {"encoder": encoder, "head": config.head, "max_length": config.max_length,
                    "chunk_size": config.chunk_size}
        else:
            kind = {"encoder": "tfidf", "head": "logistic regression", "max_length": None, "chunk_size": None}
        return {"name": self.model_dir.name, **kind, "codes": len(self.codes),
                "threshold": float(self.model.threshold), "score_kind": self.score_kind, "version": __version__,
                "explain_methods": ["attention", "attingrad", "inputxgrad"] if self.neural else [],
                "metrics": _metrics(self.model_dir)}


def _metrics(model_dir: Path) -> dict:
    """The model's headline metrics (metrics.json, written at training time): the split
    metrics at the tuned threshold; an unreadable file is reported, not fatal."""
    path = model_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ClemError(f"{path}: not valid JSON") from None
    return {key: value for key, value in metrics.items() if isinstance(value, (dict, int, float))}
