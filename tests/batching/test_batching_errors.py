"""Error isolation: bisection, out-of-memory back-off, the output contract, internal errors."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence

import pytest
from batching_testkit import Gate, RecordingObserver, yield_loop

from batching import (
    BatchContractError,
    BatchingError,
    DeadlineExceeded,
    DispatchReason,
    DropReason,
    DynamicBatcher,
    default_is_oom,
)


class Poison(Exception):
    def __init__(self, item: int) -> None:
        super().__init__(f"cannot process {item}")
        self.item = item


class OutOfMemoryError(RuntimeError):
    """Named like torch's; the batcher must recognise it without importing torch."""


async def run_one_batch(
    fn: Callable[[int], object], items: Sequence[int], name: str, **settings: object
) -> tuple[list[object], Gate, DynamicBatcher[int, object]]:
    """Submit ``items`` so that they reach ``fn`` as one batch (behind a blocker item -1)."""
    gate = Gate(lambda x: x if x < 0 else fn(x))
    batcher: DynamicBatcher[int, object] = DynamicBatcher(
        gate,
        max_batch_size=len(items),
        max_wait=30.0,
        name=name,
        **settings,  # type: ignore[arg-type]
    )
    async with batcher:
        blocker = asyncio.create_task(batcher.submit(-1))
        assert await gate.started() == [-1]
        tasks = [asyncio.create_task(batcher.submit(i)) for i in items]
        await yield_loop()
        gate.open()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await blocker
    gate.calls.pop(0)
    return outcomes, gate, batcher


@pytest.mark.parametrize("poisoned", range(8))
async def test_bisection_isolates_one_poisoned_item(poisoned: int) -> None:
    raised: list[Poison] = []

    def fn(x: int) -> int:
        if x == poisoned:
            raised.append(Poison(x))
            raise raised[-1]
        return x * 10

    outcomes, gate, _ = await run_one_batch(fn, range(8), f"bisect{poisoned}")
    for item, outcome in enumerate(outcomes):
        if item == poisoned:
            assert outcome is raised[-1], "the item gets the very exception raised for it"
        else:
            assert outcome == item * 10
    assert gate.calls[0] == list(range(8))
    assert len(gate.calls) <= 1 + 2 * math.log2(8)
    assert [len(call) for call in gate.calls if poisoned in call] == [8, 4, 2, 1]


async def test_every_item_failing_gets_its_own_error() -> None:
    def fn(x: int) -> int:
        raise Poison(x)

    outcomes, gate, _ = await run_one_batch(fn, range(4), "allbad")
    assert [o.item for o in outcomes if isinstance(o, Poison)] == [0, 1, 2, 3]
    assert len(gate.calls) == 2 * 4 - 1


async def test_base_exceptions_from_batch_fn_never_reach_the_event_loop() -> None:
    def fn(x: int) -> int:
        if x == 1:
            raise SystemExit(3)
        return x * 10

    outcomes, _, _ = await run_one_batch(fn, [0, 1], "sysexit")
    assert outcomes[0] == 0
    assert type(outcomes[1]) is BatchingError
    assert isinstance(outcomes[1].__cause__, SystemExit)
    assert "SystemExit" in str(outcomes[1])


async def test_out_of_memory_halves_the_effective_batch_size() -> None:
    def fn(x: int) -> int:
        return x * 10

    def too_big(items: list[int]) -> list[int]:
        if len(items) > 2:
            raise OutOfMemoryError("CUDA error")
        return [fn(x) for x in items]

    def batch_fn(items: list[int]) -> list[int]:
        gate(items)  # reports the call, and holds the first one
        return too_big(items)

    gate = Gate()
    observer = RecordingObserver()
    async with DynamicBatcher(batch_fn, max_wait=30.0, observer=observer, name="oom") as batcher:
        blocker = asyncio.create_task(batcher.submit(-1))
        assert await gate.started() == [-1]
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(8)]
        await yield_loop()
        gate.open()
        assert await asyncio.gather(*tasks) == [i * 10 for i in range(8)]
        await blocker
        assert batcher.effective_max_batch_size == 2
        later = await asyncio.gather(*(batcher.submit_detailed(i) for i in range(6)))
    sizes = [len(call) for call in gate.calls[1:]]
    assert sizes[:3] == [8, 4, 2]  # 8 fails, 4 fails (size -> 4 -> 2), then halves succeed
    assert max(sizes[7:]) <= 2
    assert [r.value for r in later] == [i * 10 for i in range(6)]
    assert {r.batch_size for r in later} <= {1, 2}
    assert observer.batches[1].size == 8 and not observer.batches[1].failed


async def test_out_of_memory_on_a_single_item_fails_it_without_shrinking() -> None:
    def batch_fn(items: list[int]) -> list[int]:
        if 0 in items:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return items

    async with DynamicBatcher(batch_fn, max_batch_size=4, name="oom1") as batcher:
        with pytest.raises(RuntimeError, match="out of memory"):
            await batcher.submit(0)  # alone (idle dispatch): the item is too big, not the batch
        assert batcher.effective_max_batch_size == 4
        assert await batcher.submit(1) == 1


async def test_custom_is_oom_is_used_and_its_errors_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_is_oom(exc: BaseException) -> bool:
        raise ValueError("bug in is_oom")

    def fn(x: int) -> int:
        if x == 0:
            raise OutOfMemoryError("device is full")
        return x

    caplog.set_level(logging.ERROR, logger="batching")
    outcomes, _, batcher = await run_one_batch(fn, [0, 1], "isoom", is_oom=broken_is_oom)
    assert isinstance(outcomes[0], OutOfMemoryError) and outcomes[1] == 1
    assert batcher.effective_max_batch_size == 2  # not taken as out-of-memory
    assert "is_oom raised" in caplog.text


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OutOfMemoryError("x"), True),
        (MemoryError(), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (RuntimeError("HIP OUT OF MEMORY"), True),
        (RuntimeError("shape mismatch"), False),
        (ValueError("bad input"), False),
    ],
)
def test_default_is_oom(exc: BaseException, expected: bool) -> None:
    assert default_is_oom(exc) is expected


def test_default_is_oom_survives_a_broken_str() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert default_is_oom(Weird()) is False


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda xs: xs[:-1], "returned 2 results for 3 inputs"),
        (lambda xs: [*xs, 0], "returned 4 results for 3 inputs"),
        (lambda xs: None, "returned NoneType, not a sequence"),
        (lambda xs: (x for x in xs), "returned generator, not a sequence"),
    ],
)
async def test_wrong_output_fails_the_batch_with_a_contract_error(
    returned: Callable[[list[int]], object], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[list[int]] = []

    def batch_fn(items: list[int]) -> object:
        calls.append(items)
        return returned(items)

    observer = RecordingObserver()
    caplog.set_level(logging.ERROR, logger="batching")
    batcher: DynamicBatcher[int, object] = DynamicBatcher(
        batch_fn,  # type: ignore[arg-type]
        observer=observer,
        name="contract",
    )
    async with batcher:
        outcomes = await asyncio.gather(
            *(batcher.submit(i) for i in range(3)), return_exceptions=True
        )
    assert all(isinstance(o, BatchContractError) for o in outcomes)
    assert all(message in str(o) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3, "each caller gets its own exception"
    assert calls == [[0, 1, 2]], "a broken contract is not bisected"
    assert message in caplog.text
    assert [b.failed for b in observer.batches] == [True]


async def test_an_observer_that_raises_never_breaks_batching(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def on_batch(self, *args: object) -> None:
            raise RuntimeError("metrics down")

        on_dropped = on_queue_depth = on_batch

    caplog.set_level(logging.WARNING, logger="batching")
    gate = Gate(opened=True)
    async with DynamicBatcher(gate, observer=Broken(), name="obs") as batcher:
        assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 10, 20]
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(9, deadline=time.monotonic() - 1)
    assert "batch observer on_batch failed" in caplog.text
    assert "on_dropped failed" in caplog.text and "on_queue_depth failed" in caplog.text


async def test_an_internal_error_settles_every_future(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate(opened=True)
    observer = RecordingObserver()
    async with DynamicBatcher(gate, observer=observer, name="internal") as batcher:
        await batcher.start()

        async def broken_run(*args: object) -> None:
            raise RuntimeError("bug")

        monkeypatch.setattr(batcher._runner, "run", broken_run)
        outcomes = await asyncio.gather(
            *(batcher.submit(i) for i in range(3)), return_exceptions=True
        )
        assert all(type(o) is BatchingError for o in outcomes)
        monkeypatch.undo()
        assert await batcher.submit(5) == 50, "the batcher keeps working"
    assert "internal error while running a batch" in caplog.text
    assert [b.failed for b in observer.batches] == [True, False]


async def test_a_batch_that_ends_with_unsettled_items_fails_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with DynamicBatcher(Gate(opened=True), name="unsettled") as batcher:
        await batcher.start()

        async def forgetful_run(*args: object) -> None:
            return None

        monkeypatch.setattr(batcher._runner, "run", forgetful_run)
        with pytest.raises(BatchingError, match="internal error"):
            await batcher.submit(1)


async def test_a_dispatcher_failure_fails_queued_work_and_refuses_more(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate()
    observer = RecordingObserver()
    batcher = DynamicBatcher(gate, max_wait=30.0, observer=observer, name="crash")
    async with batcher:
        blocker = asyncio.create_task(batcher.submit(0))
        assert await gate.started() == [0]
        queued = asyncio.create_task(batcher.submit(1))
        await yield_loop()

        def broken_dispatch(reason: DispatchReason) -> None:
            raise RuntimeError("bug")

        monkeypatch.setattr(batcher, "_dispatch", broken_dispatch)
        gate.open()
        assert await blocker == 0
        with pytest.raises(BatchingError, match="dispatcher failed"):
            await queued
        with pytest.raises(BatchingError):
            await batcher.submit(2)
    assert "dispatcher failed" in caplog.text
    assert observer.dropped[DropReason.SHUTDOWN] == 2


async def test_a_failed_background_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with DynamicBatcher(Gate(opened=True), name="tasklog") as batcher:

        async def boom() -> None:
            raise RuntimeError("lost")

        batcher._spawn(boom(), "boom")
        await yield_loop()
    assert "task boom failed" in caplog.text
