"""Pre-coding in the background: queued notes are read from the database, coded through the
service's batcher (beside the requests of /v1/code, in the same passes), and their suggestions
stored with the move to pre-coded, a note at a time.

Survives restarts: the queue is the database. A note whose pass was cut short (a crash, a
kill -9) is still queued and is coded when the service comes back; the store keeps the first
suggestions of a note that was coded twice and drops the rest, so nothing is stored twice.
A pass that fails counts against its notes (three failures park a note until `work requeue`),
and the worker backs off instead of spinning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi.concurrency import run_in_threadpool

from clem_icd.workbench.store import WorkStore

log = logging.getLogger("clem_icd.serve")
IDLE_POLL_S = 2.0  # a note queued by another process (work add, a second replica) is seen this soon


class PreCoder:
    """`run()` until cancelled; `wake()` when notes were queued here."""

    def __init__(self, store: WorkStore, code: Callable[[list[str]], Awaitable[list[dict]]], *,
                 model_name: str, model_version: str, batch_notes: int):
        self.store = store
        self.code = code
        self.model = {"model_name": model_name, "model_version": model_version}
        self.batch_notes = batch_notes
        self._queued = asyncio.Event()
        self.coded = 0  # notes pre-coded by this process (metrics, tests)

    def wake(self) -> None:
        self._queued.set()

    async def run(self) -> None:
        backoff = 1.0
        while True:
            self._queued.clear()
            rows = await run_in_threadpool(self.store.queued, self.batch_notes)
            if not rows:
                try:
                    await asyncio.wait_for(self._queued.wait(), IDLE_POLL_S)
                except TimeoutError:
                    pass
                continue
            try:
                results = await self.code([text for _, _, text in rows])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - its message could quote note text
                log.error("pre-coding %d note(s) failed: %s", len(rows), exc.__class__.__name__)
                await run_in_threadpool(self.store.precode_failed, [seq for seq, _, _ in rows])
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            stored = await run_in_threadpool(self._store, rows, results)
            self.coded += stored
            log.info("pre-coded %d note(s)", stored)

    def _store(self, rows: list[tuple], results: list[dict]) -> int:
        stored, failed = 0, []
        for (seq, _, _), result in zip(rows, results):
            if "error" in result:
                failed.append(seq)
                continue
            stored += self.store.store_suggestions(seq, {**self.model, "codes": result["codes"]})
        if failed:
            self.store.precode_failed(failed)
        return stored
