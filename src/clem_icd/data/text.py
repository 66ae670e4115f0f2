"""Text normalisation of Edin et al. (2023), as an option (CLEM-ICD keeps raw text by default).

Lower case; every run of non-alphanumeric characters becomes one space; digit-only tokens are
removed (a run of space-separated numbers between spaces, so a number at the very start or end
of the note stays, exactly as in the reference preprocessing); spaces squeezed and stripped.
"""

from __future__ import annotations

import polars as pl

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
    return clean_text_series(pl.Series([text]))[0]
