"""A note cut into short passages for description matching.

Code descriptions are phrases of a few words ("Acute appendicitis NOS"); a sentence embedding of a
long sentence blurs the phrase it contains. Notes are cut at line breaks and sentence ends, and
sentences longer than `words` words into windows of `words` words overlapping by half, so that
every phrase of up to words/2 words lies whole in some window. Passages are character spans of
the note as given, so the best-matching one can be shown as evidence.
"""

from __future__ import annotations

import re

DEFAULT_WORDS = 16  # chosen on CodiEsp train notes (docs/unseen_codes.md), not on dev
_SENTENCE = re.compile(r"[^\n]+?(?:[.;:!?](?=\s)|$)", re.MULTILINE)
_WORD = re.compile(r"\S+")


def note_passages(text: str, words: int = DEFAULT_WORDS) -> list[tuple[int, int]]:
    """(start, end) character spans of the passages of `text`, in order; none for a note
    without words."""
    if words < 2:
        raise ValueError("a passage needs at least 2 words")
    spans = []
    for sentence in _SENTENCE.finditer(text):
        tokens = [m.span() for m in _WORD.finditer(text, sentence.start(), sentence.end())]
        if not tokens:
            continue
        step = max(1, words // 2)
        starts = range(0, max(1, len(tokens) - words + step), step) if len(tokens) > words else [0]
        for first in starts:
            last = min(first + words, len(tokens)) - 1
            spans.append((tokens[first][0], tokens[last][1]))
    return spans
