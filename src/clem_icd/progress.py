"""Progress bars for long work, on stderr so that stdout stays machine-readable."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True)
_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def warn(message: str) -> None:
    """One line on stderr, shown even without progress bars (--quiet): something the user must
    know, that does not stop the work."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def progress_bar(description: str, total: float | None, *, bytes_: bool = False
                 ) -> Iterator[Callable[[float], None]]:
    """Yields `update(completed)`; a no-op when progress display is disabled.
    With `bytes_`, `total` and `completed` are byte counts and shown as sizes."""
    if not _enabled:
        yield lambda completed: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  DownloadColumn() if bytes_ else MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=_console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda completed: progress.update(task, completed=completed)
        if total is not None:  # a bar of unknown length keeps the count it reached
            progress.update(task, completed=total)
