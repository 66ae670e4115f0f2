"""Cross-request micro-batching: concurrent requests wait in one bounded queue and one inference
worker codes what is waiting together, so eight clients sending one note each cost one forward
pass, not eight.

The worker takes the oldest request, then waits at most `max_wait_s` from that request's arrival
for more (a request that arrives while a pass runs has already waited, so a busy service batches
without adding delay), and takes further requests with the same options, in arrival order, while
the pass stays within the note budget and the token budget (the tokens of all its notes). The
predictor then sorts the pass by length and codes it as `clem-icd predict` codes a block: in
forward batches of similar length within the forward budget (`max_batch_tokens`), so a pass of
many notes wastes little on padding. Every note is coded exactly as alone: the coder is
padding-invariant (each note attends only to its own tokens).

- A full queue (in notes) is refused at once with `QueueFull`: the service answers 503.
- A request whose client has gone, or whose time ran out, is abandoned: taken out of the queue if
  its pass has not started, its results dropped if it has.
- Inference runs in one thread of its own: the event loop stays free to accept, refuse and
  answer requests while a pass runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The queue has no room for a request's notes."""


@dataclass(eq=False)
class Job:
    key: Hashable  # requests with equal keys may share a pass
    items: list  # one per note, handed to the pass function as they are
    lengths: list[int]  # tokens per note
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class PassStats:
    """What one pass did, for the metrics."""

    notes: int
    requests: int
    seconds: float


class MicroBatcher:
    """`await submit(key, items, lengths)` -> the pass function's results for `items`.

    `run_pass(key, items)` codes a list of items in the worker thread and returns one result per
    item. `batching=False` codes each request alone (for comparison in benchmarks)."""

    def __init__(self, run_pass: Callable[[Hashable, list], list], *, max_notes: int,
                 max_tokens: int, max_wait_s: float, queue_notes: int, batching: bool = True,
                 on_pass: Callable[[PassStats], None] | None = None):
        self.run_pass = run_pass
        self.max_notes = max_notes
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self.queue_notes = queue_notes
        self.batching = batching
        self.on_pass = on_pass
        self._queue: deque[Job] = deque()
        self._waiting = 0  # notes in the queue
        self._arrival = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clem-icd-inference")
        self._worker: asyncio.Task | None = None
        self._running = False  # a pass is being coded

    @property
    def depth(self) -> int:
        """Notes waiting (not counting the pass that runs)."""
        return self._waiting

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Finish what is queued and the pass that runs, then stop the worker."""
        while self._queue or self._running:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def call(self, function: Callable, *args):
        """Run `function` in the inference thread (model loading, warm-up): never beside a pass."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def submit(self, key: Hashable, items: list, lengths: list[int]) -> Job:
        """Queue a request; await `job.future` for its results. Raises QueueFull."""
        if self._waiting + len(items) > self.queue_notes:
            raise QueueFull
        job = Job(key, items, lengths, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._waiting += len(items)
        self._arrival.set()
        return job

    def abandon(self, job: Job) -> None:
        """The client has gone or its time ran out: drop the job if it has not started."""
        job.future.cancel()
        if job in self._queue:
            self._queue.remove(job)
            self._waiting -= len(job.items)

    # ------------------------------------------------------------------ the worker

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
            await self._gather_more()
            jobs = self._take()
            if not jobs:
                continue
            items = [item for job in jobs for item in job.items]
            started = time.perf_counter()
            self._running = True
            try:
                results = await loop.run_in_executor(self._executor, self.run_pass, jobs[0].key, items)
            except Exception as exc:  # noqa: BLE001 - every waiting request must hear of it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._running = False
            if self.on_pass:
                self.on_pass(PassStats(len(items), len(jobs), time.perf_counter() - started))
            offset = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(results[offset:offset + len(job.items)])
                offset += len(job.items)

    async def _gather_more(self) -> None:
        """Wait until the oldest request has waited `max_wait_s` or the budget is full."""
        if not self.batching:
            return
        deadline = self._queue[0].arrived + self.max_wait_s
        while not self._budget_full() and (remaining := deadline - time.monotonic()) > 0:
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                break

    def _fits(self, notes: int, tokens: int) -> bool:
        return notes <= self.max_notes and tokens <= self.max_tokens

    def _budget_full(self) -> bool:
        return not self._fits(sum(len(job.items) for job in self._queue),
                              sum(sum(job.lengths) for job in self._queue))

    def _take(self) -> list[Job]:
        """The oldest job, then later ones with its key while the pass stays within budget. The
        oldest is always taken, even if it alone is over budget (the predictor then splits it
        into several forward batches)."""
        first = self._queue.popleft()
        taken, notes, tokens = [first], len(first.items), sum(first.lengths)
        if self.batching:
            for job in list(self._queue):
                if job.key != first.key:
                    continue
                if not self._fits(notes + len(job.items), tokens + sum(job.lengths)):
                    break
                self._queue.remove(job)
                taken.append(job)
                notes, tokens = notes + len(job.items), tokens + sum(job.lengths)
        self._waiting -= sum(len(job.items) for job in taken)
        return taken
