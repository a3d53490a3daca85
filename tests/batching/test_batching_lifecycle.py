"""Bounded queue with retry_after, graceful shutdown, and the lifecycle of a batcher."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from batching_testkit import Gate, RecordingObserver, assert_no_leftovers, state_of, yield_loop

import batching._batcher
from batching import (
    BatcherState,
    DispatchReason,
    DynamicBatcher,
    QueueFull,
    ShuttingDown,
)
from batching._policy import RetryAfterEstimator


async def test_queue_full_is_refused_at_once_with_retry_after() -> None:
    gate = Gate()
    observer = RecordingObserver()
    batcher = DynamicBatcher(gate, max_queue=3, max_wait=30.0, observer=observer, name="qfull")
    async with batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]  # dispatched: it no longer counts in the queue
        queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
        await yield_loop()
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(4)
        assert refused.value.retry_after == 1.0  # no throughput known yet: the fallback
        assert refused.value.queue_depth == 3
        gate.release(2)  # the blocker's and the queued batch's calls, not the next one
        assert await gate.started() == [1, 2, 3]
        assert await asyncio.gather(blocker, *queued) == [0, 10, 20, 30]
        # Now the throughput is known: retry_after is estimated, within its clamps.
        blocker = asyncio.create_task(batcher.submit(5))
        assert await gate.started() == [5]
        queued = [asyncio.create_task(batcher.submit(i)) for i in (6, 7, 8)]
        await yield_loop()
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(4)
        assert 0.05 <= refused.value.retry_after <= 30.0
        assert refused.value.retry_after != 1.0
        gate.open()
        await asyncio.gather(blocker, *queued)
    assert observer.dropped["refused"] == 2
    assert 4 not in gate.seen


async def test_callers_that_left_free_their_queue_slots() -> None:
    gate = Gate()
    async with DynamicBatcher(gate, max_queue=2, max_wait=30.0, name="slots") as batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        gone = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await yield_loop()
        for task in gone:
            task.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        kept = [asyncio.create_task(batcher.submit(i)) for i in (3, 4)]
        await yield_loop()
        assert batcher.queue_depth == 2
        gate.open()
        assert await asyncio.gather(blocker, *kept) == [0, 30, 40]
    assert gate.seen == {0, 3, 4}


def test_retry_after_estimate() -> None:
    estimator = RetryAfterEstimator(concurrency=2, fallback=1.5)
    assert estimator.items_per_second is None
    assert estimator.retry_after(100) == 1.5
    estimator.record(0, 1.0)  # ignored
    estimator.record(10, 0.5)  # 10 items in 0.5 s, two batches at a time: 40 items/s
    assert estimator.items_per_second == pytest.approx(40.0)
    assert estimator.retry_after(20) == pytest.approx(0.5)
    assert estimator.retry_after(0) == 0.05
    assert estimator.retry_after(10**6) == 30.0
    estimator.record(10, 0.25)  # 80 items/s, smoothed
    assert estimator.items_per_second == pytest.approx(40.0 + 0.2 * 40.0)


async def test_close_finishes_queued_work_and_refuses_new_work() -> None:
    gate = Gate()
    observer = RecordingObserver()
    batcher = DynamicBatcher(gate, max_wait=30.0, observer=observer, name="drain")
    await batcher.start()
    blocker = asyncio.create_task(batcher.submit_detailed(0))
    assert await gate.started() == [0]
    queued = [asyncio.create_task(batcher.submit_detailed(i)) for i in (1, 2, 3)]
    await yield_loop()
    closing = asyncio.create_task(batcher.close(drain_timeout=10.0))
    await yield_loop()
    assert state_of(batcher) is BatcherState.DRAINING
    with pytest.raises(ShuttingDown):
        await batcher.submit(4)
    gate.open()
    await closing
    results = await asyncio.gather(blocker, *queued)
    assert [r.value for r in results] == [0, 10, 20, 30]
    assert {r.reason for r in results[1:]} == {DispatchReason.DRAIN}
    assert state_of(batcher) is BatcherState.CLOSED
    assert observer.dropped["shutdown"] == 1  # the refused submit
    assert_no_leftovers("drain")


async def test_close_past_its_timeout_fails_the_rest_with_shutting_down() -> None:
    gate = Gate()
    observer = RecordingObserver()
    batcher = DynamicBatcher(gate, max_wait=30.0, observer=observer, name="abort")
    await batcher.start()
    blocker = asyncio.create_task(batcher.submit(0))
    assert await gate.started() == [0]
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await yield_loop()
    closing = asyncio.create_task(batcher.close(drain_timeout=0.05))
    outcomes = await asyncio.gather(blocker, *queued, return_exceptions=True)
    assert all(isinstance(o, ShuttingDown) for o in outcomes)
    assert observer.dropped["shutdown"] == 3
    assert observer.depths[-1] == 0
    gate.open()  # batch_fn can't be interrupted; close waits (bounded) for its thread
    await closing
    assert state_of(batcher) is BatcherState.CLOSED
    assert gate.seen == {0}
    assert_no_leftovers("abort")


async def test_close_gives_up_on_a_stuck_worker_thread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(batching._batcher, "_WORKER_EXIT_GRACE", 0.05)
    gate = Gate()
    batcher = DynamicBatcher(gate, name="stuck")
    task = asyncio.create_task(batcher.submit(1))
    assert await gate.started() == [1]
    await batcher.close(drain_timeout=0.01)
    assert "still running in a worker thread" in caplog.text
    with pytest.raises(ShuttingDown):
        await task
    gate.open()
    for thread in threading.enumerate():
        if thread.name.startswith("stuck-"):
            thread.join(timeout=5)
    assert_no_leftovers("stuck")


async def test_lifecycle_start_close_and_misuse() -> None:
    batcher = DynamicBatcher(Gate(opened=True), name="life")
    assert state_of(batcher) is BatcherState.CREATED
    async with batcher as same:
        assert same is batcher
        await batcher.start()  # starting twice is a no-op
        assert state_of(batcher) is BatcherState.RUNNING
        assert await batcher.submit(1) == 10
    assert state_of(batcher) is BatcherState.CLOSED
    await batcher.close()  # closing twice is a no-op
    with pytest.raises(ShuttingDown):
        await batcher.submit(2)
    with pytest.raises(RuntimeError, match="cannot start again"):
        await batcher.start()
    assert_no_leftovers("life")


async def test_close_before_start_and_concurrent_closes() -> None:
    never_started = DynamicBatcher(Gate(opened=True), name="never")
    await never_started.close()
    assert state_of(never_started) is BatcherState.CLOSED

    batcher = DynamicBatcher(Gate(opened=True), name="twice")
    assert await batcher.submit(1) == 10
    await asyncio.gather(batcher.close(), batcher.close())
    assert state_of(batcher) is BatcherState.CLOSED
    assert_no_leftovers("twice")


async def test_drain_timeout_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="batching")
    gate = Gate()
    batcher = DynamicBatcher(gate, name="slow")
    task = asyncio.create_task(batcher.submit(1))
    assert await gate.started() == [1]
    closing = asyncio.create_task(batcher.close(drain_timeout=0.01))
    with pytest.raises(ShuttingDown):
        await task
    gate.open()
    await closing
    assert "drain timed out" in caplog.text


async def test_a_batch_task_cancelled_before_its_first_step_still_settles_its_items() -> None:
    gate = Gate(opened=True)
    observer = RecordingObserver()
    batcher: DynamicBatcher[int, object] = DynamicBatcher(gate, observer=observer, name="early")
    await batcher.start()
    entries = [batcher._enqueue(i, None) for i in (1, 2)]
    batcher._dispatch(DispatchReason.IDLE)  # as the dispatcher would, before it gets to run
    (task,) = (t for t in batcher._tasks if t.get_name() == "early-batch")
    task.cancel()  # before its first step: its body, and so its finally, never runs
    for entry in entries:
        with pytest.raises(ShuttingDown):
            async with asyncio.timeout(5):
                await entry.future
    assert batcher.inflight_batches == 0
    assert observer.dropped["shutdown"] == 2
    assert [(b.size, b.failed) for b in observer.batches] == [(2, True)]
    await batcher.close()
    assert_no_leftovers("early")
