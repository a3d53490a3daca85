"""When batches go, and why: idle, full, timeout; batch growth under load; results in order."""

from __future__ import annotations

import asyncio
import time

import pytest
from batching_testkit import Gate, RecordingObserver, assert_no_leftovers, state_of, yield_loop

from batching import BatcherState, DispatchReason, DynamicBatcher


async def test_lone_request_is_not_held_for_max_wait() -> None:
    gate = Gate(opened=True)
    observer = RecordingObserver()
    async with DynamicBatcher(gate, max_wait=2.0, observer=observer, name="idle") as batcher:
        start = time.monotonic()
        done = await batcher.submit_detailed(7)
        elapsed = time.monotonic() - start
    assert elapsed < 0.5, f"a lone request waited {elapsed:.3f}s for a 2 s timer"
    assert done.value == 70
    assert (done.batch_size, done.reason) == (1, DispatchReason.IDLE)
    assert [(b.size, b.reason, b.failed) for b in observer.batches] == [
        (1, DispatchReason.IDLE, False)
    ]


async def test_full_batch_goes_while_another_runs() -> None:
    gate = Gate()
    batcher = DynamicBatcher(
        gate, max_batch_size=4, max_wait=30.0, max_concurrent_batches=2, name="full"
    )
    async with batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        tasks = [asyncio.create_task(batcher.submit_detailed(i)) for i in range(1, 5)]
        # Without the "full" rule these would wait 30 s; one slot is free, so they go now.
        assert await gate.started() == [1, 2, 3, 4]
        assert batcher.inflight_batches == 2
        gate.open()
        results = await asyncio.gather(*tasks)
        assert await blocker == 0
    assert [r.value for r in results] == [10, 20, 30, 40]
    assert {(r.reason, r.batch_size) for r in results} == {(DispatchReason.FULL, 4)}


async def test_staged_batch_starts_without_the_event_loop() -> None:
    """A full batch that arrives while every worker is busy is handed to the pool at once, so
    a worker that finishes starts it in its own thread even while the event loop is held."""
    gate = Gate()
    observer = RecordingObserver()
    batcher = DynamicBatcher(gate, max_batch_size=2, max_wait=30.0, observer=observer,
                             name="staged")
    async with batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        staged = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        later = asyncio.create_task(batcher.submit(3))
        await yield_loop()
        assert (batcher.queue_depth, batcher.inflight_batches) == (1, 2)
        gate.release(1)
        # Hold the event loop (no await) and watch the worker take the staged batch by itself.
        deadline = time.monotonic() + 5.0
        while len(gate.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)  # noqa: ASYNC251 -- holding the loop is the point
        assert gate.calls == [[0], [1, 2]]
        gate.open()
        assert await asyncio.gather(blocker, *staged, later) == [0, 10, 20, 30]
    assert [(b.size, b.reason) for b in observer.batches] == [
        (1, DispatchReason.IDLE), (2, DispatchReason.FULL), (1, DispatchReason.IDLE)
    ]
    assert_no_leftovers("staged")


async def test_timeout_dispatch_while_another_batch_runs() -> None:
    gate = Gate()
    max_wait = 0.05
    batcher = DynamicBatcher(gate, max_wait=max_wait, max_concurrent_batches=2, name="timeout")
    async with batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        tasks = [asyncio.create_task(batcher.submit_detailed(i)) for i in (1, 2)]
        assert await gate.started() == [1, 2]
        gate.open()
        first, second = await asyncio.gather(*tasks)
        await blocker
    assert first.reason == second.reason == DispatchReason.TIMEOUT
    assert first.queue_wait >= max_wait - 0.005


async def test_batches_grow_while_the_device_is_busy() -> None:
    gate = Gate()
    observer = RecordingObserver()
    batcher = DynamicBatcher(gate, max_batch_size=4, max_wait=30.0, observer=observer, name="grow")
    async with batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(1, 11)]
        await yield_loop()
        # One full batch is staged in the worker pool behind the running one; the rest wait.
        assert (batcher.queue_depth, batcher.inflight_batches) == (6, 2)
        gate.open()
        assert await asyncio.gather(*tasks) == [i * 10 for i in range(1, 11)]
        await blocker
    assert gate.calls == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    reasons = [(b.size, b.reason) for b in observer.batches]
    assert reasons == [
        (1, DispatchReason.IDLE),
        (4, DispatchReason.FULL),
        (4, DispatchReason.FULL),
        (2, DispatchReason.IDLE),
    ]
    assert max(observer.depths) == 10
    # The staged batch's items waited for the worker, and their wait says so.
    assert min(observer.batches[1].queue_waits) > 0


async def test_completed_reports_how_the_item_was_batched() -> None:
    gate = Gate()
    async with DynamicBatcher(gate, max_batch_size=8, name="detail") as batcher:
        blocker = asyncio.create_task(batcher.submit_detailed(0))
        assert await gate.started() == [0]
        tasks = [asyncio.create_task(batcher.submit_detailed(i)) for i in (1, 2, 3)]
        await yield_loop()
        await asyncio.sleep(0.05)  # the three wait at least this long for the blocker
        gate.open()
        results = await asyncio.gather(blocker, *tasks)
    assert [r.batch_size for r in results] == [1, 3, 3, 3]
    assert all(r.exec_time >= 0 for r in results)
    # The three waited for the blocker to finish; the blocker itself went at once.
    assert all(r.queue_wait >= 0.05 > results[0].queue_wait for r in results[1:])


async def test_many_concurrent_items_each_get_their_own_result() -> None:
    gate = Gate(opened=True)
    async with DynamicBatcher(gate, max_batch_size=16, max_queue=1000, name="many") as batcher:
        results = await asyncio.gather(*(batcher.submit(i) for i in range(500)))
        assert results == [i * 10 for i in range(500)]
        assert max(len(call) for call in gate.calls) <= 16
        assert sorted(x for call in gate.calls for x in call) == list(range(500))
    assert_no_leftovers("many")


async def test_submit_starts_a_created_batcher() -> None:
    batcher = DynamicBatcher(Gate(opened=True), name="lazy")
    assert state_of(batcher) is BatcherState.CREATED
    assert await batcher.submit(3) == 30
    assert state_of(batcher) is BatcherState.RUNNING
    assert (batcher.name, batcher.effective_max_batch_size) == ("lazy", 8)
    await batcher.close()
    assert state_of(batcher) is BatcherState.CLOSED


@pytest.mark.parametrize(
    "settings",
    [
        {"max_batch_size": 0},
        {"max_wait": -0.001},
        {"max_wait": float("inf")},
        {"max_wait": float("nan")},
        {"max_queue": 0},
        {"max_concurrent_batches": 0},
    ],
)
def test_settings_that_cannot_work_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(lambda xs: xs, **settings)  # type: ignore[arg-type]


async def test_items_of_different_keys_never_share_a_batch() -> None:
    """``group_key``: a batch takes the oldest item's key; the others keep their order."""
    gate = Gate()
    batcher = DynamicBatcher(gate, max_batch_size=3, max_wait=30.0, name="keyed",
                             group_key=lambda x: x % 2)
    async with batcher:
        blocker = asyncio.create_task(batcher.submit(100))  # even: holds the only worker
        assert await gate.started() == [100]
        tasks = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3, 4, 5, 7, 6)]
        await yield_loop()
        gate.open()
        results = await asyncio.gather(blocker, *tasks)
    assert results == [1000, 10, 20, 30, 40, 50, 70, 60]
    assert gate.calls[1:] == [[1, 3, 5], [2, 4, 6], [7]]
    assert_no_leftovers(batcher)
