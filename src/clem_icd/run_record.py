"""command.json: the command that made an output folder, so that a results table can say how to
reproduce each of its rows (`clem-icd report`).

The command is the one that makes the folder from scratch (the CLI spells it from its parsed
options, see clem_icd.cli.record): a resumed training records the command without --resume, as
a resumed run ends where an uninterrupted one does, and each seed of `train --seeds` records its
own single-seed command. It holds paths as they were given, so it reproduces from `cwd`.
"""

from __future__ import annotations

import json
import os
import shlex
from datetime import datetime, timezone
from pathlib import Path

from clem_icd.atomic import write_json_atomic
from clem_icd.errors import ClemError
from clem_icd.version import __version__

COMMAND_FILE = "command.json"


def write_command_record(folder: Path | str, argv: list[str], **extra) -> Path:
    """Write FOLDER/command.json for the command line `argv` (program first): the argv, the same
    shell-quoted, the working directory, the CLEM-ICD version, the time (UTC), and `extra`."""
    path = Path(folder) / COMMAND_FILE
    record = {"command": shlex.join(argv), "argv": list(argv), "cwd": os.getcwd(),
              "clem_icd_version": __version__,
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
    write_json_atomic(record, path)
    return path


def read_command_record(folder: Path | str) -> dict | None:
    """FOLDER/command.json, or None when the folder has none (made before it was written);
    ClemError naming the file when it is not a JSON object with a string `command`."""
    path = Path(folder) / COMMAND_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClemError(f"{path}: cannot read it as JSON ({exc.__class__.__name__})") from None
    if not isinstance(record, dict) or not isinstance(record.get("command"), str):
        raise ClemError(f"{path}: 'command' must be a string (a command.json written by clem-icd)")
    return record
