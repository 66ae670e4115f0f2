"""Checkpoints to resume training after a crash or a pre-emption.

A checkpoint is Accelerate's own state (`save_state`: model, optimizer, the registered
learning-rate scheduler, every process's RNG states) plus our `progress.json` (epoch, position
inside it, optimizer steps, the epoch's running loss, early-stopping state and best score) and a
`manifest.json` listing every file with its size and sha256, written last.

Written atomically: all processes save into `checkpoints/.tmp-step-N`, then the main process
writes the manifest and renames the folder to `checkpoints/step-N` (8 digits, so names sort by
step). A folder without a manifest, or whose files do not match it (a crash while writing, a disk
that filled up, a file damaged later), is not a checkpoint: resuming reports it in one line and
takes the one before.

Accelerate writes the optimizer, scheduler and RNG states with torch.save (pickle): load only
checkpoints your own runs wrote.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from clem_icd.atomic import write_text_atomic
from clem_icd.data.io import sha256_file
from clem_icd.errors import ClemError
from clem_icd.progress import warn

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
PREFIX = "step-"


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save_checkpoint(accelerator, output_dir: Path, progress: dict, keep: int) -> Path:
    """Save the training state after optimizer step `progress['step']`; every process calls it.
    Keeps the newest `keep` checkpoints."""
    root = checkpoints_dir(output_dir)
    name = checkpoint_name(progress["step"])
    tmp, final = root / f".tmp-{name}", root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / PROGRESS).write_text(json.dumps(progress, indent=2) + "\n")
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
        write_text_atomic(json.dumps({"step": progress["step"], "files": manifest}, indent=2) + "\n", tmp / MANIFEST)
        for path in files:
            _fsync(path)
        if final.exists():  # the same step saved again (the end of an epoch after a step checkpoint)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders that have a manifest, oldest first (not verified: see `problem`)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())


def problem(folder: Path) -> str | None:
    """Why `folder` is not a usable checkpoint (one line), or None when every file is there,
    of the size and content its manifest records."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return "no manifest (it was not finished)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    if PROGRESS not in files:
        return f"{PROGRESS} is missing"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected.get('bytes')}"
        if sha256_file(path) != expected.get("sha256"):
            return f"{name} does not match its sha256"
    return None


def find_checkpoint(output_dir: Path, report=warn) -> Path | None:
    """The newest usable checkpoint in `output_dir`; each newer unusable one is reported (one
    line through `report`) and skipped."""
    for folder in reversed(complete_checkpoints(output_dir)):
        reason = problem(folder)
        if reason is None:
            return folder
        report(f"checkpoint {folder} is incomplete or damaged ({reason}); trying the previous one")
    return None


def checked_checkpoint(folder: Path) -> Path:
    """A checkpoint named by the user: it must be usable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClemError(f"{folder}: no such checkpoint folder")
    reason = problem(folder)
    if reason is not None:
        raise ClemError(f"{folder}: not a usable checkpoint ({reason})")
    return folder


def discard_after(output_dir: Path, folder: Path) -> None:
    """Checkpoints newer than the one resumed from belong to a future that is being redone
    (older damaged ones, or a PATH the user chose): left, they could outlive the new ones."""
    for other in complete_checkpoints(output_dir):
        if other.name > Path(folder).name:
            shutil.rmtree(other, ignore_errors=True)


def read_progress(folder: Path) -> dict:
    return json.loads((Path(folder) / PROGRESS).read_text())


def remove_checkpoints(output_dir: Path) -> None:
    """After a finished training the checkpoints have served their purpose."""
    shutil.rmtree(checkpoints_dir(output_dir), ignore_errors=True)


def _fsync(path: Path) -> None:
    """Data on disk before the rename that makes the checkpoint count (a power cut after it
    must not leave a manifest pointing at empty files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
