"""Text normalisation of Edin et al. (2023), as an option (CLEM-ICD keeps raw text by default).

Lower case; every run of non-alphanumeric characters becomes one space; digit-only tokens are
removed (a run of space-separated numbers between spaces, so a number at the very start or end
of the note stays, exactly as in the reference preprocessing); spaces squeezed and stripped.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

# What a model records of the text its training notes went through, and applies to new notes:
# none (raw) or edin2023 (the cleaning above, `prepare --clean-text`).
TEXT_CLEANINGS = ("none", "edin2023")

_NON_ALNUM = r"[^A-Za-z0-9]+"
_DIGIT_TOKENS = r"(\s\d+)+\s"


def clean_text_series(texts: pl.Series) -> pl.Series:
    return (
        texts.str.to_lowercase()
        .str.replace_all(_NON_ALNUM, " ")
        .str.replace_all(_DIGIT_TOKENS, " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def clean_text(text: str) -> str:
    import polars as pl

    return clean_text_series(pl.Series([text]))[0]


def text_cleaning_of(options: dict) -> str:
    """The TEXT_CLEANINGS name of a prepared dataset's text, from its manifest's options."""
    return "edin2023" if options.get("clean_text") else "none"


def clean_texts(texts: list[str], cleaning: str) -> list[str]:
    """`texts` as a model with text cleaning `cleaning` (TEXT_CLEANINGS) reads new notes."""
    if cleaning == "none":
        return list(texts)
    if cleaning != "edin2023":
        raise ValueError(f"unknown text cleaning {cleaning!r}")
    import polars as pl

    return clean_text_series(pl.Series(list(texts), dtype=pl.String)).to_list()


_DIGIT_TOKENS_RE = re.compile(_DIGIT_TOKENS)
_NON_ALNUM_RE = re.compile(_NON_ALNUM)
_SPACES_RE = re.compile(r"\s+")


def _substitute(pattern: re.Pattern, text: str, origin: list[int]) -> tuple[str, list[int]]:
    """`pattern.sub(" ", text)`, carrying along each character's offset in the original note;
    the inserted space takes the offset of the first character it replaces."""
    pieces, mapped, last = [], [], 0
    for match in pattern.finditer(text):
        pieces.append(text[last:match.start()])
        mapped.extend(origin[last:match.start()])
        pieces.append(" ")
        mapped.append(origin[match.start()])
        last = match.end()
    pieces.append(text[last:])
    mapped.extend(origin[last:])
    return "".join(pieces), mapped


def clean_text_with_offsets(text: str) -> tuple[str, list[int]]:
    """`clean_text(text)` and, for each of its characters, the offset of the character of
    `text` it came from, so that spans found in cleaned text map back to the original note.

    Lower-casing goes character by character: a character whose lower case is longer (e.g.
    'İ' → 'i̇') gives all its characters the same origin."""
    chars, origin = [], []
    for index, char in enumerate(text):
        lowered = char.lower()
        chars.append(lowered)
        origin.extend([index] * len(lowered))
    cleaned, origin = _substitute(_NON_ALNUM_RE, "".join(chars), origin)
    cleaned, origin = _substitute(_DIGIT_TOKENS_RE, cleaned, origin)
    cleaned, origin = _substitute(_SPACES_RE, cleaned, origin)
    start = len(cleaned) - len(cleaned.lstrip())
    end = len(cleaned.rstrip())
    return cleaned[start:end], origin[start:end]


def is_encodable(text: str) -> bool:
    """False for a string holding a lone surrogate (e.g. from a JSON "\\ud800" escape or bytes
    decoded with surrogateescape): neither a tokenizer nor Parquet can take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
