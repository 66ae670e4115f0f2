"""The one rule for the config.json of every folder CLEM-ICD saves (coder, TF-IDF baseline, fused
model, description matcher): it records the version that wrote it, and a version that finds a
key it does not know stops instead of ignoring it.

A key this version does not know was written by a newer version (or by hand): dropping it would
run the model without a setting it was trained or tuned with, silently (a newer text cleaning, a
calibration term) - so loading refuses, naming the key and both versions. Folders written before
the version was recorded (no VERSION_KEY) still load when every key is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from clem_icd.errors import ClemError
from clem_icd.version import __version__

VERSION_KEY = "clem_icd_version"


def stamped(config: Mapping) -> dict:
    """`config` with the version of CLEM-ICD that writes it."""
    return {**config, VERSION_KEY: __version__}


def check_keys(path: Path | str, config: Mapping, known: Iterable[str]) -> None:
    """Raises ClemError when `config` (read from `path`) has a key outside `known` (VERSION_KEY
    is always known)."""
    _refuse(path, sorted(set(config) - set(known) - {VERSION_KEY}), config.get(VERSION_KEY), "")


def check_nested_keys(path: Path | str, top: Mapping, section: str, known: Iterable[str]) -> None:
    """The same rule for the mapping `top[section]` (keys named `section.key`), with the version
    recorded at the top of the file."""
    values = top.get(section)
    if isinstance(values, Mapping):
        _refuse(path, sorted(set(values) - set(known)), top.get(VERSION_KEY), f"{section}.")


def _refuse(path: Path | str, unknown: list[str], written_by, prefix: str) -> None:
    if not unknown:
        return
    keys = ", ".join(f"'{prefix}{key}'" for key in unknown)
    writer = f"clem-icd {written_by}" if written_by else "an unknown clem-icd version (none recorded)"
    raise ClemError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {keys} (written by {writer}; "
                    f"this is clem-icd {__version__}): upgrade clem-icd")
