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
def progress_bar(description: str, total: float | None, *, bytes_: bool = False, status: bool = False
                 ) -> Iterator[Callable[..., None]]:
    """Yields `update(completed)`; a no-op when progress display is disabled.
    With `bytes_`, `total` and `completed` are byte counts and shown as sizes. With `status`,
    `update(completed, text)` also shows `text` after the bar (a running loss, a rate)."""
    if not _enabled:
        yield lambda completed, text=None: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn() if bytes_ else MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=_console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def update(completed: float, text: str | None = None) -> None:
            progress.update(task, completed=completed, **({} if text is None else {"status": text}))

        yield update
        if total is not None:  # a bar of unknown length keeps the count it reached
            progress.update(task, completed=total)
