"""Coding notes with a trained coder: probabilities, chosen codes and their evidence.

Notes are tokenised once (with character offsets), cut into windows (one per note unless
long-note windowing is on), and windows are scored in length-sorted batches so that little
padding is computed; results come back in input order. A batch holds `batch_size` windows or,
with `max_batch_tokens`, as many as fit a token budget (`token_budget_batches`, the rule that
training batches by too).

Long notes: by default a note is truncated at the model's `max_length` (as in training) and
flagged `truncated`. With `window_stride`, a longer note is read as overlapping windows of
`max_length` tokens (`capacity` content tokens plus the special tokens) every `window_stride`
tokens, each code's score is the maximum over the windows, and its evidence comes from the window
that gave that maximum. A stride longer than `capacity` would skip tokens and is refused.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from clem_icd.batching import pad_batch, token_budget_batches
from clem_icd.choice import PROBABILITY, choose_codes, code_entry
from clem_icd.errors import ClemError
from clem_icd.inference.attribution import EXPLAIN_METHODS, token_attributions
from clem_icd.inference.spans import evidence_spans
from clem_icd.inference.tokens import (
    EncodedNote,
    Window,
    encode_notes,
    note_windows,
    special_tokens,
)
from clem_icd.precision import autocast_dtype

# Word-share thresholds that maximised word-level F1 against CodiEsp-X gold evidence (gold codes
# explained, 100 train notes, MiniLM cross-attention model on the Spanish text; see
# docs/results.md). Gradient-weighted attributions concentrate on fewer words, so their best
# threshold is higher.
DEFAULT_EVIDENCE_THRESHOLDS = {"attention": 0.03, "attingrad": 0.10, "inputxgrad": 0.05}


@dataclass
class PredictOptions:
    threshold: float | None = None  # None: the threshold tuned on val at training time
    top_k: int | None = None  # at most this many codes per note
    explain: str | None = None  # None | attention | attingrad | inputxgrad
    window_stride: int | None = None  # None: truncate long notes; else overlapping windows
    batch_size: int = 8  # windows per forward pass; ignored when max_batch_tokens is set
    # Token budget per forward pass: as many windows as fit, windows x the longest one's tokens
    # (special tokens included) <= max_batch_tokens. None: batch_size windows per pass.
    max_batch_tokens: int | None = None
    evidence_threshold: float | None = None  # a word's share of the attribution to be evidence; None: per method
    evidence_words: int = 10  # at most this many words per code (adjacent ones merge into spans)
    max_spans: int = 5  # evidence spans per code, best first
    precision: str = "auto"  # auto | fp32 | bf16 | fp16

    def __post_init__(self) -> None:
        if self.explain is not None and self.explain not in EXPLAIN_METHODS:
            raise ClemError(f"--explain must be one of {', '.join(EXPLAIN_METHODS)}, got '{self.explain}'")
        if self.top_k is not None and self.top_k < 1:
            raise ClemError("--top-k must be at least 1")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ClemError("--threshold must be between 0 and 1")
        if self.window_stride is not None and self.window_stride < 1:
            raise ClemError("--window-stride must be at least 1 token")
        if self.evidence_threshold is None and self.explain is not None:
            self.evidence_threshold = DEFAULT_EVIDENCE_THRESHOLDS[self.explain]
        if self.evidence_threshold is not None and not 0.0 <= self.evidence_threshold < 1.0:
            raise ClemError("--evidence-threshold must be in [0, 1)")
        if self.batch_size < 1 or self.evidence_words < 1 or self.max_spans < 1:
            raise ClemError("batch size, evidence words and spans must be at least 1")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ClemError(f"--max-batch-tokens must be at least 1 token, got {self.max_batch_tokens}")


class NotePredictor:
    """Codes notes with an `ICDCoder`; `predict(texts)` gives one result per text:
    {"codes": [{code, system, description, score, probability[, evidence]}], "truncated": bool}
    (clem_icd.choice.code_entry; the coder's scores are probabilities)."""

    def __init__(self, coder, options: PredictOptions | None = None):
        self.coder = coder
        self.options = options or PredictOptions()
        self.threshold = coder.threshold if self.options.threshold is None else self.options.threshold
        self.prefix, self.suffix = special_tokens(coder.tokenizer)
        self.capacity = coder.config.max_length - len(self.prefix) - len(self.suffix)
        if self.capacity < 1:
            raise ClemError(f"max_length {coder.config.max_length} leaves no room for text")
        stride = self.options.window_stride
        if stride is not None and stride > self.capacity:
            # Windows are `capacity` tokens long: a longer stride would skip the tokens between them.
            raise ClemError(f"--window-stride {stride} is larger than this model's window of {self.capacity} "
                            f"tokens (max_length {coder.config.max_length} minus "
                            f"{len(self.prefix) + len(self.suffix)} special tokens), so the tokens between "
                            f"windows would be skipped: use at most {self.capacity}")
        n = len(coder.codes)
        self.systems = coder.config.code_systems or [""] * n
        self.descriptions = coder.config.descriptions or [""] * n

    # ------------------------------------------------------------------ public

    def encode(self, texts: list[str]) -> list[EncodedNote]:
        """Tokenised notes (with character offsets), to hand to `predict` when a caller needs
        their lengths first (the service's batcher budgets by tokens) without tokenising twice."""
        return encode_notes(self.coder.tokenizer, texts, self.coder.config.text_cleaning)

    def sequence_length(self, note: EncodedNote) -> int:
        """Tokens of the longest window the model reads for an encoded note (specials included)."""
        return len(self.prefix) + min(len(note.ids), self.capacity) + len(self.suffix)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(len(texts), codes) probabilities, each code's maximum over a note's windows."""
        notes = self.encode(texts)
        windows = self._windows(notes)
        pooled, _ = self._pool(len(notes), windows, self._score(notes, windows))
        return _sigmoid(pooled)

    def predict(self, texts: list[str], codes: list[list[str]] | None = None,
                notes: list[EncodedNote] | None = None) -> list[dict]:
        """One result per text. `codes` (per text) replaces the threshold's choice: exactly
        those codes are reported and explained (e.g. gold codes, for evaluating evidence).
        `notes`: the texts already encoded by `encode`."""
        notes = self.encode(texts) if notes is None else notes
        requested = None if codes is None else self._code_indices(codes, len(texts))
        windows = self._windows(notes)
        explain = self.options.explain
        windows_of: dict[int, int] = defaultdict(int)
        for window in windows:
            windows_of[window.note] += 1
        probabilities = np.zeros((len(texts), len(self.coder.codes)), dtype=np.float32)
        chosen: dict[int, list[int]] = {}
        evidence: dict[tuple[int, int], list[dict]] = {}

        # Notes read in one window, with no explanation or attention (no backward pass): scores,
        # codes and explanations in one pass.
        one_pass = explain in (None, "attention")
        rest = [w for w in windows if not one_pass or windows_of[w.note] > 1]
        for batch in self._batches([w for w in windows if one_pass and windows_of[w.note] == 1]):
            given = None if requested is None else [requested[w.note] for w in batch]
            logits, attributions = self._run(notes, batch, codes=given)
            for window, row, scores in zip(batch, logits, attributions):
                probabilities[window.note] = _sigmoid(row)
                chosen[window.note] = self._choose(probabilities[window.note]) if requested is None else requested[window.note]
                for code, token_scores in scores.items():
                    evidence[window.note, code] = self._spans(texts, notes, window, token_scores)

        # The others: score every window, max-pool per note, choose the codes, then explain
        # each code in the window that gave its maximum.
        if rest:
            pooled, best = self._pool(len(notes), rest, self._score(notes, rest))
            wanted: dict[Window, list[int]] = defaultdict(list)
            for note in {w.note for w in rest}:
                probabilities[note] = _sigmoid(pooled[note])
                chosen[note] = self._choose(probabilities[note]) if requested is None else requested[note]
                for code in chosen[note] if explain else []:
                    wanted[rest[best[note, code]]].append(code)
            # A batch costs one backward pass per code of its window with the most codes, so
            # windows with similar numbers of codes are batched together.
            for batch in self._batches(list(wanted), key=lambda w: (len(wanted[w]), w.end - w.start)):
                _, attributions = self._run(notes, batch, codes=[wanted[w] for w in batch])
                for window, scores in zip(batch, attributions):
                    for code, token_scores in scores.items():
                        evidence[window.note, code] = self._spans(texts, notes, window, token_scores)

        results = []
        for index, note in enumerate(notes):
            codes = []
            for j in chosen[index]:
                entry = code_entry(self.coder.codes[j], self.systems[j], self.descriptions[j],
                                   probabilities[index, j], PROBABILITY)
                if explain:
                    entry["evidence"] = evidence.get((index, j), [])
                codes.append(entry)
            results.append({"codes": codes, "truncated": self._truncated(note)})
        return results

    # ------------------------------------------------------------------ internals

    def _code_indices(self, codes: list[list[str]], n_texts: int) -> list[list[int]]:
        if len(codes) != n_texts:
            raise ClemError(f"{len(codes)} code lists for {n_texts} texts")
        index = {c: j for j, c in enumerate(self.coder.codes)}
        unknown = sorted({c for row in codes for c in row if c not in index})
        if unknown:
            raise ClemError(f"{len(unknown)} code(s) not known to this model, e.g. {', '.join(unknown[:5])}")
        return [[index[c] for c in row] for row in codes]

    def _truncated(self, note: EncodedNote) -> bool:
        return self.options.window_stride is None and len(note.ids) > self.capacity

    def _windows(self, notes: list[EncodedNote]) -> list[Window]:
        return [w for i, note in enumerate(notes)
                for w in note_windows(i, len(note.ids), self.capacity, self.options.window_stride)]

    def _batches(self, windows: list[Window], key=None) -> list[list[Window]]:
        ordered = sorted(windows, key=key or (lambda w: w.end - w.start))
        if self.options.max_batch_tokens is not None:
            return token_budget_batches(ordered, self._sequence_length, self.options.max_batch_tokens)
        size = self.options.batch_size
        return [ordered[i:i + size] for i in range(0, len(ordered), size)]

    def _sequence_length(self, window: Window) -> int:
        """Tokens the model reads for a window: its content plus the special tokens around it."""
        return len(self.prefix) + window.end - window.start + len(self.suffix)

    def _choose(self, row: np.ndarray) -> list[int]:
        return choose_codes(row, self.threshold, self.options.top_k)

    def _pool(self, n_notes: int, windows: list[Window], logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per note and code, the maximum logit over the note's windows and the index (into
        `windows`) of the first window that reached it."""
        pooled = np.full((n_notes, logits.shape[1]), -np.inf, dtype=np.float32)
        best = np.zeros((n_notes, logits.shape[1]), dtype=np.int64)
        for index, (window, row) in enumerate(zip(windows, logits)):
            better = row > pooled[window.note]
            pooled[window.note, better] = row[better]
            best[window.note, better] = index
        return pooled, best

    def _score(self, notes: list[EncodedNote], windows: list[Window]) -> np.ndarray:
        """Logits (windows, codes) in the order of `windows`."""
        out = np.zeros((len(windows), len(self.coder.codes)), dtype=np.float32)
        position = {w: i for i, w in enumerate(windows)}
        for batch in self._batches(windows):
            logits, _ = self._run(notes, batch, codes=None, explain=False)
            out[[position[w] for w in batch]] = logits
        return out

    def _run(self, notes: list[EncodedNote], batch: list[Window], codes: list[list[int]] | None,
             explain: bool = True) -> tuple[np.ndarray, list[dict[int, np.ndarray]]]:
        """Logits of a batch of windows and, when explaining, per window {code: scores of its
        content tokens}. `codes` None: explain the codes each window's own scores choose."""
        coder = self.coder
        sequences = [self.prefix + notes[w.note].ids[w.start:w.end] + self.suffix for w in batch]
        input_ids, mask = pad_batch(sequences, coder.tokenizer.pad_token_id or 0)
        input_ids, mask = input_ids.to(coder.device), mask.to(coder.device)
        method = self.options.explain if explain else None
        dtype = autocast_dtype(self.options.precision, coder.device)
        autocast = torch.autocast(coder.device.type, dtype=dtype) if dtype else nullcontext()
        coder.eval()
        with autocast:
            if method is None:
                with torch.inference_mode():
                    logits = coder(input_ids, mask).float().cpu().numpy()
                return logits, [{} for _ in batch]
            choose = (lambda b, row: codes[b]) if codes is not None else (lambda b, row: self._choose(_sigmoid(row)))
            logits, scores = token_attributions(coder, input_ids, mask, method, choose)
        first = len(self.prefix)
        per_window = [{code: s[first:first + w.end - w.start] for code, s in window_scores.items()}
                      for w, window_scores in zip(batch, scores)]
        return logits, per_window

    def _spans(self, texts: list[str], notes: list[EncodedNote], window: Window,
               token_scores: np.ndarray) -> list[dict]:
        note = notes[window.note]
        return evidence_spans(texts[window.note], note.spans[window.start:window.end],
                              note.words[window.start:window.end], token_scores,
                              threshold=self.options.evidence_threshold, words=self.options.evidence_words,
                              max_spans=self.options.max_spans)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
