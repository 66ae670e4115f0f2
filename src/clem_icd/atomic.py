"""Atomic file output: write beside the target, then rename, so readers never see half a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from clem_icd.errors import ClemError


def write_text_atomic(text: str | Iterable[str], path: Path | str) -> None:
    """`text`, or the pieces of text an iterable yields (a large file written piece by piece,
    never held whole); an error while they are made leaves the old file, or none, in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; this is ordinary output
        with os.fdopen(fd, "w") as handle:
            for piece in [text] if isinstance(text, str) else text:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(data: dict, path: Path | str) -> None:
    write_text_atomic(json.dumps(data, indent=2) + "\n", path)


def publish_folder(tmp: Path, path: Path) -> None:
    """Move a finished temporary folder into place. An existing folder is moved aside first
    and removed only once the new one is there."""
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; this is ordinary output
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


@contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """Yields a temporary sibling of `path` to fill; on success it replaces `path`, on error it
    is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        publish_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(path: Path | str, model_type: str, what: str) -> None:
    """Refuse to replace a folder that holds something else: `path` may be missing, empty, or
    a folder whose config.json says `model_type` (`what` names that kind in the message)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ClemError(f"{path}: exists and is not a folder")
    if not any(path.iterdir()):
        return
    try:
        same = json.loads((path / "config.json").read_text()).get("model_type") == model_type
    except Exception:  # missing, unreadable or not JSON: not ours to replace
        same = False
    if not same:
        raise ClemError(f"{path}: folder exists and is not {what}; choose another path")
