"""detect_many: a bounded, lazy sliding window that cleans up after itself."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing

import httpx
import pytest
from conftest import ok, status, until

from clients import AsyncDetectionClient, InvalidRequest, ItemError, ItemResult, Progress
from clients._many import bounded_map

MakeClient = Callable[..., AsyncDetectionClient]


def item(index: int) -> bytes:
    return f"img-{index}-".encode()


def index_of(request: httpx.Request) -> int:
    match = re.search(rb"img-(\d+)-", request.read())
    assert match is not None
    return int(match.group(1))


class Tracker:
    """A handler that counts requests in flight, optionally held at a gate."""

    def __init__(self, delay: Callable[[int], float] = lambda i: 0.0) -> None:
        self.delay = delay
        self.in_flight = 0
        self.peak = 0
        self.started: list[int] = []
        self.cancelled = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        index = index_of(request)
        self.started.append(index)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.gate.wait()
            await asyncio.sleep(self.delay(index))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return status(400, "invalid_image") if index % 5 == 4 else ok(str(index))


async def collect(client: AsyncDetectionClient, items: object, **kw: object) -> list[object]:
    return [outcome async for outcome in client.detect_many(items, **kw)]  # type: ignore[arg-type]


async def test_window_never_exceeds_concurrency(make_client: MakeClient) -> None:
    tracker = Tracker(delay=lambda i: (i % 3) * 0.002)
    outcomes = await collect(make_client(tracker), (item(i) for i in range(60)), concurrency=7)
    assert len(outcomes) == 60
    assert tracker.peak == 7


async def test_source_is_consumed_lazily(make_client: MakeClient) -> None:
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield item(pulled - 1)

    tracker = Tracker()
    tracker.gate.clear()
    client = make_client(tracker)
    results = []

    async def consume() -> None:
        async with aclosing(client.detect_many(endless(), concurrency=4)) as outcomes:
            async for outcome in outcomes:
                results.append(outcome)
                if len(results) == 10:
                    return

    task = asyncio.create_task(consume())
    for _ in range(20):
        await asyncio.sleep(0)
    assert pulled == 4 and tracker.started == [0, 1, 2, 3]
    tracker.gate.set()
    await task
    assert len(results) == 10
    assert pulled <= 10 + 4
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_ordered_mode_yields_in_input_order(make_client: MakeClient) -> None:
    tracker = Tracker(delay=lambda i: (10 - i) * 0.003)
    outcomes = await collect(
        make_client(tracker), [item(i) for i in range(10)], concurrency=10, ordered=True
    )
    assert [o.index for o in outcomes] == list(range(10))  # type: ignore[attr-defined]


async def test_unordered_mode_yields_as_they_finish(make_client: MakeClient) -> None:
    release = [asyncio.Event() for _ in range(6)]

    async def held(request: httpx.Request) -> httpx.Response:
        await release[index_of(request)].wait()
        return ok()

    received: list[int] = []

    async def consume() -> None:
        async for outcome in make_client(held).detect_many([item(i) for i in range(6)]):
            received.append(outcome.index)

    task = asyncio.create_task(consume())
    order = [3, 5, 0, 4, 1, 2]
    for count, index in enumerate(order, start=1):
        release[index].set()
        await until(lambda count=count: len(received) >= count)  # type: ignore[misc]
    await task
    assert received == order


async def test_ordered_mode_stays_bounded_behind_a_slow_item(make_client: MakeClient) -> None:
    gate = asyncio.Event()
    started: list[int] = []

    async def first_is_slow(request: httpx.Request) -> httpx.Response:
        index = index_of(request)
        started.append(index)
        if index == 0:
            await gate.wait()
        return ok()

    client = make_client(first_is_slow)
    task = asyncio.create_task(
        collect(client, (item(i) for i in range(20)), concurrency=3, ordered=True)
    )
    for _ in range(50):
        await asyncio.sleep(0)
    assert sorted(started) == [0, 1, 2]  # two finished, waiting behind 0, still count
    gate.set()
    outcomes = await task
    assert [o.index for o in outcomes] == list(range(20))  # type: ignore[attr-defined]


async def test_per_item_errors_carry_input_and_index(make_client: MakeClient) -> None:
    items = [item(i) for i in range(10)]
    outcomes = await collect(make_client(Tracker()), items, ordered=True)
    errors = [o for o in outcomes if isinstance(o, ItemError)]
    results = [o for o in outcomes if isinstance(o, ItemResult)]
    assert [e.index for e in errors] == [4, 9]
    assert errors[0].input == items[4] and not errors[0].ok
    assert isinstance(errors[0].error, InvalidRequest) and errors[0].error.code == "invalid_image"
    assert len(results) == 8 and results[0].ok and results[0].result.image_name == "0"
    assert results[0].latency_s >= 0


async def test_progress_callback(make_client: MakeClient) -> None:
    seen: list[Progress] = []
    await collect(
        make_client(Tracker()), [item(i) for i in range(10)], on_progress=seen.append, ordered=True
    )
    assert [p.completed for p in seen] == list(range(1, 11))
    assert seen[-1].failed == 2 and seen[4].failed == 1
    assert Progress(10, 0, 2.0).rate == 5.0 and Progress(1, 0, 0.0).rate == 0.0


async def test_async_iterable_source_and_parameters(make_client: MakeClient) -> None:
    seen_bodies: list[bytes] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen_bodies.append(request.read())
        return ok()

    async def source() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0)
            yield item(i)

    outcomes = await collect(make_client(handler), source(), conf=0.6, classes=["circle"])
    assert len(outcomes) == 3
    assert all(b"0.6" in body and b"circle" in body for body in seen_bodies)


async def test_cancelling_the_consumer_cancels_in_flight_tasks(make_client: MakeClient) -> None:
    tracker = Tracker()
    tracker.gate.clear()
    task = asyncio.create_task(
        collect(make_client(tracker), (item(i) for i in range(100)), concurrency=5)
    )
    await until(lambda: tracker.in_flight == 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tracker.cancelled == 5 and tracker.in_flight == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_breaking_out_and_closing_leaves_nothing_behind(make_client: MakeClient) -> None:
    tracker = Tracker(delay=lambda i: 0.0 if i == 0 else 3600.0)
    async with aclosing(
        make_client(tracker).detect_many((item(i) for i in range(100)), concurrency=8)
    ) as outcomes:
        async for _ in outcomes:
            break
    assert tracker.cancelled == 7
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_bug_in_one_item_stops_the_run_and_cancels_the_rest(
    make_client: MakeClient,
) -> None:
    tracker = Tracker(delay=lambda i: 3600.0)
    items: list[object] = [item(0), item(1), 42]
    with pytest.raises(TypeError):
        await collect(make_client(tracker), items, concurrency=3)
    assert tracker.cancelled == 2
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_concurrency_must_be_positive() -> None:
    async def fn(index: int, value: int) -> int:
        return value

    with pytest.raises(ValueError, match="concurrency"):
        [x async for x in bounded_map([1], fn, concurrency=0)]


async def test_bounded_map_on_an_empty_source() -> None:
    async def fn(index: int, value: int) -> int:
        raise AssertionError("never called")

    assert [x async for x in bounded_map([], fn, concurrency=3, ordered=True)] == []


async def test_detect_many_on_a_closed_client(make_client: MakeClient) -> None:
    client = make_client(Tracker())
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await collect(client, [item(0)])
