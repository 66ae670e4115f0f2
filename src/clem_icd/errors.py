"""User-facing errors.

A `ClemError` is bad input or a bad request: the CLI prints its message as one line and exits
non-zero, without a traceback. Messages name the file, row or field at fault and must never
contain note text (it is protected health information).
"""

from __future__ import annotations

from pathlib import Path


class ClemError(Exception):
    """An error the user can fix; its message is shown as-is."""


def where(path: str | Path, row: int | None = None, field: str | None = None) -> str:
    """Format a location like `notes.csv, row 12, field 'text'` for error messages."""
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)
