"""Property tests: whatever the arrival pattern, batch size, failures, cancellations and shutdown,
every item gets exactly its own result or its own error, and nothing is left behind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from batching_testkit import RecordingObserver, assert_no_leftovers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batching import (
    BatcherState,
    DeadlineExceeded,
    DynamicBatcher,
    QueueFull,
    ShuttingDown,
)


class Poison(Exception):
    def __init__(self, item: int) -> None:
        super().__init__(item)
        self.item = item


class OutOfMemoryError(RuntimeError):
    pass


@dataclass(frozen=True)
class Scenario:
    size: int
    max_batch_size: int
    max_concurrent: int
    max_wait: float
    max_queue: int
    gaps: tuple[int, ...]  # event-loop turns before each submit
    poisoned: frozenset[int]
    expired: frozenset[int]  # submitted with a deadline already past
    cancel_after: tuple[tuple[int, int], ...]  # (item, loop turns after its submit)
    oom_above: int | None  # batch_fn runs out of memory on batches larger than this
    close_after: int | None  # close once this many items were submitted
    drain_timeout: float
    groups: int | None  # group_key = item % groups: a batch never mixes two


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    size = draw(st.integers(1, 40))
    items = st.integers(0, size - 1)
    return Scenario(
        size=size,
        max_batch_size=draw(st.integers(1, 8)),
        max_concurrent=draw(st.integers(1, 3)),
        max_wait=draw(st.sampled_from([0.0, 0.0005, 0.002])),
        max_queue=draw(st.integers(1, 48)),
        gaps=tuple(draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))),
        poisoned=frozenset(draw(st.sets(items, max_size=5))),
        expired=frozenset(draw(st.sets(items, max_size=3))),
        cancel_after=tuple(draw(st.dictionaries(items, st.integers(0, 6), max_size=5)).items()),
        oom_above=draw(st.none() | st.integers(1, 8)),
        close_after=draw(st.none() | st.integers(0, size)),
        drain_timeout=draw(st.sampled_from([0.0, 5.0])),
        groups=draw(st.none() | st.integers(1, 3)),
    )


@dataclass
class Record:
    calls: list[list[int]]
    succeeded: list[list[int]]
    lock: threading.Lock


def make_batch_fn(s: Scenario, record: Record) -> object:
    def batch_fn(items: list[int]) -> list[int]:
        with record.lock:
            record.calls.append(list(items))
        if s.oom_above is not None and len(items) > s.oom_above:
            raise OutOfMemoryError("CUDA out of memory")
        for item in items:
            if item in s.poisoned:
                raise Poison(item)
        with record.lock:
            record.succeeded.append(list(items))
        return [item * 10 for item in items]

    return batch_fn


async def cancel_later(task: asyncio.Task[int], turns: int) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()


async def play(s: Scenario) -> None:
    record = Record([], [], threading.Lock())
    observer = RecordingObserver()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        make_batch_fn(s, record),  # type: ignore[arg-type]
        max_batch_size=s.max_batch_size,
        max_wait=s.max_wait,
        max_queue=s.max_queue,
        max_concurrent_batches=s.max_concurrent,
        observer=observer,
        name="prop",
        group_key=None if s.groups is None else (lambda x, g=s.groups: x % g),
    )
    cancels = dict(s.cancel_after)
    tasks: list[asyncio.Task[int]] = []
    helpers: list[asyncio.Task[None]] = []
    closing: asyncio.Task[None] | None = None
    await batcher.start()
    for item in range(s.size):
        if item == s.close_after:
            closing = asyncio.create_task(batcher.close(s.drain_timeout))
        for _ in range(s.gaps[item]):
            await asyncio.sleep(0)
        deadline = time.monotonic() - 1.0 if item in s.expired else time.monotonic() + 60.0
        tasks.append(asyncio.create_task(batcher.submit(item, deadline=deadline)))
        if item in cancels:
            helpers.append(asyncio.create_task(cancel_later(tasks[-1], cancels[item])))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*helpers)
    await (closing if closing is not None else batcher.close(s.drain_timeout))
    check(s, record, outcomes, batcher)
    assert_no_leftovers("prop")


def check(
    s: Scenario, record: Record, outcomes: Sequence[object], batcher: DynamicBatcher[int, int]
) -> None:
    ran = {item for call in record.calls for item in call}
    for item, outcome in enumerate(outcomes):
        if isinstance(outcome, DeadlineExceeded | QueueFull) or (
            isinstance(outcome, ShuttingDown)
            and s.close_after is not None
            and item >= s.close_after
        ):
            assert item not in ran, f"{item} was refused or expired, yet reached batch_fn"
        elif isinstance(outcome, Poison):
            assert outcome.item == item, "an item got another item's error"
        elif isinstance(outcome, int):
            assert item not in s.poisoned and outcome == item * 10
        else:
            assert isinstance(outcome, asyncio.CancelledError | ShuttingDown), outcome
        if item in s.expired:
            assert isinstance(outcome, DeadlineExceeded | ShuttingDown | asyncio.CancelledError)
    # Each item succeeds in batch_fn at most once; no call exceeds the batch size.
    succeeded = [item for call in record.succeeded for item in call]
    assert len(succeeded) == len(set(succeeded))
    assert all(1 <= len(call) <= s.max_batch_size for call in record.calls)
    if s.groups is not None:
        assert all(len({item % s.groups for item in call}) == 1 for call in record.calls)
    assert batcher.state is BatcherState.CLOSED
    assert (batcher.queue_depth, batcher.inflight_batches) == (0, 0)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_item_gets_its_own_outcome_exactly_once(s: Scenario) -> None:
    asyncio.run(play(s))
