"""Tokenising notes for inference, with every token's character span in the original note.

The model reads what it was trained on: the note after the training data's text cleaning (if
any), tokenised, at most `max_length` tokens with the tokenizer's special tokens. Evidence is
reported on the note the user gave, so every token keeps the [start, end) of the original
characters it came from (cleaning offsets composed with the tokenizer's offset mapping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clem_icd.data.text import clean_text_with_offsets
from clem_icd.errors import ClemError


@dataclass
class EncodedNote:
    ids: list[int]  # content tokens of the whole note, without special tokens
    spans: np.ndarray  # (tokens, 2): [start, end) of each token in the original text
    words: np.ndarray  # (tokens,): index of the word each token belongs to (subwords share one)


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) of one note, read by the model in one piece."""

    note: int
    start: int
    end: int


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (e.g. [CLS] and [SEP])."""
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for at in range(len(full) - len(probe) + 1):
        if full[at:at + len(probe)] == probe:
            return full[:at], full[at + len(probe):]
    raise ClemError("cannot locate the tokenizer's special tokens")


def encode_notes(tokenizer, texts: list[str], cleaning: str = "none") -> list[EncodedNote]:
    if not getattr(tokenizer, "is_fast", False):
        raise ClemError("this model's tokenizer gives no character offsets (a 'fast' tokenizer is needed)")
    if cleaning == "edin2023":
        prepared = [clean_text_with_offsets(text) for text in texts]
        model_texts = [cleaned for cleaned, _ in prepared]
    else:
        prepared, model_texts = None, list(texts)
    # verbose=False: the whole note is tokenised on purpose; windows or truncation come after.
    encoding = tokenizer(model_texts, add_special_tokens=False, return_offsets_mapping=True,
                         return_attention_mask=False, return_token_type_ids=False, verbose=False)
    notes = []
    for row, ids in enumerate(encoding["input_ids"]):
        spans = np.asarray(encoding["offset_mapping"][row], dtype=np.int64).reshape(-1, 2)
        if prepared is not None:
            spans = _to_original(spans, prepared[row][1], len(texts[row]))
        word_ids = encoding.word_ids(row)
        words = np.asarray([i if w is None else w for i, w in enumerate(word_ids)], dtype=np.int64)
        notes.append(EncodedNote(ids=list(ids), spans=spans, words=words))
    return notes


def _to_original(spans: np.ndarray, origin: list[int], text_length: int) -> np.ndarray:
    """Spans in cleaned text → spans in the original: a span starts at its first character's
    origin and ends after its last character's origin."""
    if not len(spans):
        return spans
    origin_arr = np.asarray(origin + [text_length], dtype=np.int64)
    starts = origin_arr[spans[:, 0]]
    ends = np.where(spans[:, 1] > spans[:, 0], origin_arr[np.maximum(spans[:, 1] - 1, 0)] + 1, starts)
    return np.stack([starts, ends], axis=1)


def note_windows(note: int, n_tokens: int, capacity: int, stride: int | None) -> list[Window]:
    """One window holding the first `capacity` tokens; with a `stride`, windows every `stride`
    tokens until the last one reaches the end of the note (the last window is aligned to the
    end, so no window is shorter than it needs to be). A stride longer than `capacity` would skip
    the tokens between windows and is refused."""
    if stride is not None and not 1 <= stride <= capacity:
        raise ClemError(f"window stride {stride} must be between 1 and the window of {capacity} tokens")
    if stride is None or n_tokens <= capacity:
        return [Window(note, 0, min(n_tokens, capacity))]
    starts = list(range(0, n_tokens - capacity, stride)) + [n_tokens - capacity]
    return [Window(note, s, s + capacity) for s in starts]
