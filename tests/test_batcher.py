"""The service's micro-batcher alone (no model, no HTTP): what goes into one pass, in what order,
and what happens to a full queue, an abandoned request and a failed pass."""

from __future__ import annotations

import asyncio
import threading

import pytest

from clem_icd.serve.batcher import MicroBatcher, QueueFull


class Recorder:
    """A pass function that records its passes and can be held until released."""

    def __init__(self):
        self.passes: list[tuple] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, key, items):
        self.release.wait(10)
        self.passes.append((key, list(items)))
        return [f"{key}:{item}" for item in items]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def batcher(recorder, **options) -> MicroBatcher:
    settings = {"max_notes": 64, "max_tokens": 10_000, "max_wait_s": 0.05, "queue_notes": 100, **options}
    return MicroBatcher(recorder, **settings)


def test_waiting_requests_share_a_pass_in_arrival_order_and_get_their_own_results():
    recorder = Recorder()

    async def scenario():
        worker = batcher(recorder)
        worker.start()
        jobs = [worker.submit("k", [f"r{i}n{j}" for j in range(i + 1)], [10] * (i + 1)) for i in range(3)]
        results = [await job.future for job in jobs]
        await worker.stop()
        return results

    results = run(scenario())
    assert recorder.passes == [("k", ["r0n0", "r1n0", "r1n1", "r2n0", "r2n1", "r2n2"])]
    assert results == [["k:r0n0"], ["k:r1n0", "k:r1n1"], ["k:r2n0", "k:r2n1", "k:r2n2"]]


def test_passes_keep_to_the_note_and_token_budgets_and_never_mix_options():
    recorder = Recorder()

    async def scenario():
        worker = batcher(recorder, max_notes=3, max_tokens=250)
        worker.start()
        jobs = [worker.submit("a", ["a1", "a2"], [100, 100]),
                worker.submit("b", ["b1"], [10]),
                worker.submit("a", ["a3"], [100]),  # 300 tokens with a1, a2: over the token budget
                worker.submit("a", ["a4"], [10]),
                worker.submit("a", ["a5", "a6", "a7", "a8"], [1] * 4)]  # over the note budget: alone
        await asyncio.gather(*(job.future for job in jobs))
        await worker.stop()

    run(scenario())
    assert recorder.passes == [("a", ["a1", "a2"]), ("b", ["b1"]), ("a", ["a3", "a4"]),
                               ("a", ["a5", "a6", "a7", "a8"])]


def test_without_batching_each_request_is_its_own_pass():
    recorder = Recorder()

    async def scenario():
        worker = batcher(recorder, batching=False)
        worker.start()
        jobs = [worker.submit("k", [f"n{i}"], [5]) for i in range(4)]
        await asyncio.gather(*(job.future for job in jobs))
        await worker.stop()

    run(scenario())
    assert recorder.passes == [("k", [f"n{i}"]) for i in range(4)]


def test_a_full_queue_refuses_and_an_abandoned_request_never_runs():
    recorder = Recorder()
    recorder.release.clear()

    async def scenario():
        worker = batcher(recorder, queue_notes=3, max_notes=1, max_wait_s=0)
        worker.start()
        running = worker.submit("k", ["first"], [1])
        await asyncio.sleep(0.1)  # the worker holds it (in the pass function)
        gone = worker.submit("k", ["gone"], [1])
        kept = worker.submit("k", ["kept1", "kept2"], [1, 1])
        assert worker.depth == 3
        with pytest.raises(QueueFull):
            worker.submit("k", ["one too many"], [1])
        worker.abandon(gone)
        assert worker.depth == 2
        worker.submit("k", ["fits now"], [1])
        recorder.release.set()
        await running.future
        assert await kept.future == ["k:kept1", "k:kept2"]
        assert gone.future.cancelled()
        await worker.stop()

    run(scenario())
    assert [items for _, items in recorder.passes] == [["first"], ["kept1", "kept2"], ["fits now"]]


def test_a_failed_pass_fails_its_requests_and_the_worker_goes_on():
    calls = []

    def flaky(key, items):
        calls.append(items)
        if len(calls) == 1:
            raise MemoryError("out of memory")
        return list(items)

    async def scenario():
        worker = MicroBatcher(flaky, max_notes=1, max_tokens=100, max_wait_s=0, queue_notes=10)
        worker.start()
        failing, fine = worker.submit("k", ["x"], [1]), worker.submit("k", ["y"], [1])
        with pytest.raises(MemoryError):
            await failing.future
        assert await fine.future == ["y"]
        await worker.stop()

    run(scenario())
