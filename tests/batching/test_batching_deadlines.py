"""Work for callers that left or ran out of time is dropped before it reaches batch_fn."""

from __future__ import annotations

import asyncio
import time

import pytest
from batching_testkit import Gate, RecordingObserver, yield_loop

from batching import DeadlineExceeded, DynamicBatcher
from batching._pending import Pending, PendingQueue


class Poison(Exception):
    pass


def poison_three(x: int) -> int:
    if x == 3:
        raise Poison(x)
    return x * 10


async def test_expired_item_fails_while_queued_and_never_runs() -> None:
    gate = Gate()
    observer = RecordingObserver()
    async with DynamicBatcher(gate, max_wait=30.0, observer=observer, name="expire") as batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        doomed = asyncio.create_task(batcher.submit(1, deadline=time.monotonic() + 0.05))
        kept = asyncio.create_task(batcher.submit(2))
        with pytest.raises(DeadlineExceeded):
            await doomed  # fails on its deadline, while the device is still busy
        assert gate.calls == [[0]]
        assert batcher.queue_depth == 1
        gate.open()
        assert await kept == 20
        await blocker
    assert 1 not in gate.seen
    assert observer.dropped["expired"] == 1


async def test_deadline_already_passed_is_refused_at_once() -> None:
    gate = Gate(opened=True)
    observer = RecordingObserver()
    async with DynamicBatcher(gate, observer=observer, name="late") as batcher:
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(1, deadline=time.monotonic() - 0.001)
        assert await batcher.submit(2, deadline=time.monotonic() + 10) == 20
    assert gate.seen == {2}
    assert observer.dropped["expired"] == 1


async def test_cancelled_caller_is_dropped_before_dispatch() -> None:
    gate = Gate()
    observer = RecordingObserver()
    async with DynamicBatcher(gate, max_wait=30.0, observer=observer, name="cancel") as batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        gone = asyncio.create_task(batcher.submit(1))
        await yield_loop()
        assert batcher.queue_depth == 1
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queue_depth == 0
        gate.open()
        await blocker
        assert await batcher.submit(2) == 20
    assert gate.calls == [[0], [2]]
    assert observer.dropped["cancelled"] == 1


async def test_caller_cancelled_while_its_batch_runs_does_not_disturb_the_rest() -> None:
    gate = Gate()
    async with DynamicBatcher(gate, name="inflight") as batcher:
        tasks = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        assert await gate.started() == [1, 2]
        tasks[0].cancel()
        await yield_loop()
        gate.open()
        assert await tasks[1] == 20
        assert tasks[0].cancelled()


async def test_items_gone_or_late_are_not_retried_after_a_failure() -> None:
    gate = Gate(poison_three)
    observer = RecordingObserver()
    async with DynamicBatcher(gate, max_wait=30.0, observer=observer, name="retry") as batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        deadline = time.monotonic() + 0.1
        tasks = [
            asyncio.create_task(batcher.submit(1)),
            asyncio.create_task(batcher.submit(2, deadline=deadline)),
            asyncio.create_task(batcher.submit(3)),
            asyncio.create_task(batcher.submit(4)),
        ]
        await yield_loop()
        gate.release()
        assert await gate.started() == [1, 2, 3, 4]
        tasks[0].cancel()
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.01)  # let 2 expire
        gate.open()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await blocker
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert isinstance(outcomes[1], DeadlineExceeded)
    assert isinstance(outcomes[2], Poison)
    assert outcomes[3] == 40
    # The first half [1, 2] was not run again: one caller left, the other ran out of time.
    assert gate.calls == [[0], [1, 2, 3, 4], [3, 4], [3], [4]]
    assert (observer.dropped["cancelled"], observer.dropped["expired"]) == (1, 1)


async def test_queue_take_leaves_out_cancelled_and_expired_entries() -> None:
    loop = asyncio.get_running_loop()
    queue: PendingQueue[int, int] = PendingQueue()
    entries = [Pending(i, loop.create_future(), 0.0, None) for i in range(5)]
    entries[1].future.cancel()  # the caller left, but was not counted out yet
    entries[2].deadline = 5.0  # expired by the time of take()
    for entry in entries:
        queue.push(entry)
    assert queue.mark_dead(entries[3])
    assert not queue.mark_dead(entries[3])
    assert len(queue) == 4
    taken = queue.take(limit=2, now=10.0)
    assert [e.item for e in taken.batch] == [0, 4]
    assert [e.item for e in taken.expired] == [2]
    assert taken.cancelled == 1
    assert len(queue) == 0
    assert queue.oldest() is None
    assert not queue.mark_dead(entries[0])  # it left the queue


async def test_queue_compact_and_oldest_skip_dead_entries() -> None:
    loop = asyncio.get_running_loop()
    queue: PendingQueue[int, int] = PendingQueue()
    entries = [Pending(i, loop.create_future(), 0.0, None) for i in range(4)]
    for entry in entries:
        queue.push(entry)
    queue.mark_dead(entries[0])
    queue.mark_dead(entries[2])
    assert (len(queue), queue.slots_used) == (2, 4)
    oldest = queue.oldest()
    assert oldest is not None and oldest.item == 1
    queue.compact()
    assert (len(queue), queue.slots_used) == (2, 2)
    assert [e.item for e in queue.take_all()] == [1, 3]


async def test_item_that_expires_while_staged_is_dropped_before_it_runs() -> None:
    """A full batch staged while every worker is busy is checked again in the worker, just
    before the call: an item whose deadline passed while it waited there never runs."""
    gate = Gate()
    observer = RecordingObserver()
    batcher = DynamicBatcher(gate, max_batch_size=1, max_wait=30.0, observer=observer,
                             name="staged-expiry")
    async with batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        deadline = time.monotonic() + 0.05
        doomed = asyncio.create_task(batcher.submit(1, deadline=deadline))
        await yield_loop()
        # Staged: out of the queue, handed to the busy worker pool; its timer can't drop it.
        assert (batcher.queue_depth, batcher.inflight_batches) == (0, 2)
        await asyncio.sleep(deadline - time.monotonic() + 0.02)  # let the deadline pass
        assert not doomed.done()
        gate.open()
        with pytest.raises(DeadlineExceeded, match="before it ran"):
            await doomed
        assert await blocker == 0
    assert gate.calls == [[0]]
    assert observer.dropped["expired"] == 1
