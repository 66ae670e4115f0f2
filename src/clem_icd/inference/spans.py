"""Token attributions → evidence spans a human coder can check.

Token scores are made shares of the code's total attribution over the note's tokens (so scores
of different methods read alike: 0.4 = this span carries 40% of the evidence), as Edin et al.
(2024) normalise before thresholding. Subword pieces are summed into their word; words that
contain a letter or digit (punctuation alone is not evidence) and hold at least `threshold` of
the attribution are kept, at most the `words` best; adjacent kept words merge into one span,
and the `max_spans` spans with the largest share are reported, best first, with their text
exactly as it stands in the original note.
"""

from __future__ import annotations

import numpy as np


def evidence_spans(text: str, token_spans: np.ndarray, token_words: np.ndarray, scores: np.ndarray, *,
                   threshold: float = 0.02, words: int = 10, max_spans: int = 5) -> list[dict]:
    """Spans {start, end, score, text} for one code. `token_spans` (tokens, 2) are offsets in
    `text`, `token_words` the word index of each token, `scores` each token's attribution."""
    scores = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64)), 0.0, None)
    total = scores.sum()
    if not len(scores) or total <= 0:
        return []
    shares = scores / total
    # Words in reading order: consecutive tokens with the same word index.
    boundaries = np.flatnonzero(np.diff(token_words) != 0) + 1
    first = np.concatenate([[0], boundaries])
    last = np.concatenate([boundaries, [len(token_words)]]) - 1
    word_share = np.add.reduceat(shares, first)
    starts, ends = token_spans[first, 0], token_spans[last, 1]
    kept = []  # best words first; only those considered are checked for letters or digits
    for word in np.argsort(-word_share, kind="stable"):
        if len(kept) == words or word_share[word] <= 0 or word_share[word] < threshold:
            break
        if any(ch.isalnum() for ch in text[starts[word]:ends[word]]):
            kept.append(word)
    if not kept:
        return []
    kept = np.sort(np.asarray(kept))
    groups = np.split(kept, np.flatnonzero(np.diff(kept) != 1) + 1)
    found = []
    for group in groups:
        start, end = int(starts[group[0]]), int(ends[group[-1]])
        found.append({"start": start, "end": end, "score": round(float(word_share[group].sum()), 4),
                      "text": text[start:end]})
    found.sort(key=lambda span: (-span["score"], span["start"]))
    return found[:max_spans]
