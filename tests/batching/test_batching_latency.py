"""The latency target: a cost model per batch size and passes in flight, the plan it gives (the
largest throughput whose pass fits half the target; no cap when none fits), smaller batches for an
item that has waited, and a batcher that keeps to the plan and tells its observer."""

from __future__ import annotations

import asyncio
import time

import pytest
from batching_testkit import RecordingObserver

from batching import DynamicBatcher
from batching._latency import CostModel, LatencyPlan, LatencyPlanner


def _planner(target: float, slots: int, cost: dict[int, float], max_batch: int = 8,
             slowdown: float = 1.0) -> LatencyPlanner:
    planner = LatencyPlanner(target, max_batch, slots)
    for k in range(1, slots + 1):
        for b, seconds in cost.items():
            planner.record(b, k, seconds * (slowdown if k > 1 else 1.0), max_batch)
    return planner


LINEAR = {b: 0.01 + 0.02 * b for b in range(1, 9)}  # 30 ms for one item, 170 ms for eight


def test_the_cost_model_predicts_unseen_sizes_in_proportion_and_unseen_concurrency_as_seen() -> None:
    model = CostModel()
    assert model.predict(4, 1) is None
    model.record(4, 1, 0.08)
    assert model.predict(4, 1) == pytest.approx(0.08)
    assert model.predict(8, 1) == pytest.approx(0.16)
    assert model.predict(2, 1) == pytest.approx(0.04)
    assert model.predict(4, 2) == pytest.approx(0.08)  # not measured at 2: tried as if free
    model.record(4, 1, 0.18)  # a moving average, not the last pass alone
    assert 0.08 < (model.predict(4, 1) or 0) < 0.18


def test_the_plan_caps_the_batch_so_that_a_pass_fits_half_the_target() -> None:
    # 150 ms: a pass of at most 75 ms, three items (70 ms); both slots, passes do not contend
    assert _planner(0.150, 2, LINEAR).plan == LatencyPlan(3, 2)
    # a loose target caps nothing
    assert _planner(1.0, 2, LINEAR).plan == LatencyPlan(8, 2)


def test_the_plan_caps_the_passes_in_flight_when_they_slow_each_other_down() -> None:
    # two passes at once take twice as long: one pass of three (43 items/s) beats two of one (33)
    assert _planner(0.150, 2, LINEAR, slowdown=2.0).plan == LatencyPlan(3, 1)


def test_no_cap_when_the_target_cannot_be_met() -> None:
    assert _planner(0.040, 2, LINEAR).plan == LatencyPlan(8, 2)  # one item takes 30 ms > 20


def test_an_item_that_waited_gets_a_smaller_batch_unless_it_is_late_anyway() -> None:
    planner = _planner(0.150, 1, LINEAR)
    assert planner.batch_size(0.0, 1) == 3
    assert planner.batch_size(0.090, 1) == 2  # 90 + 50 ms fits, 90 + 70 does not
    assert planner.batch_size(0.200, 1) == 3  # past the target already: drain the queue


async def test_the_batcher_keeps_its_batches_to_the_plan_and_reports_it() -> None:
    def pass_of(items: list[int]) -> list[int]:
        time.sleep(0.004 + 0.008 * len(items))  # the pass's compute: 12 ms for one, 68 for eight
        return items

    observer = RecordingObserver()
    async with DynamicBatcher(pass_of, max_batch_size=8, max_wait=0.0, observer=observer,
                              latency_target=0.060) as batcher:
        assert batcher.latency_plan == LatencyPlan(8, 1)  # nothing measured yet
        await asyncio.gather(*(batcher.submit(i) for i in range(8)))  # one batch of eight
        assert batcher.latency_plan is not None and batcher.latency_plan.max_batch_size <= 3
        results = await asyncio.gather(*(batcher.submit(i) for i in range(24)))
    assert results == list(range(24))
    sizes = [e.size for e in observer.batches]
    assert sizes[0] == 8 and max(sizes[1:]) <= 3, sizes
    assert any(plan[0] <= 3 for plan in observer.plans)


async def test_without_a_target_batches_are_sized_for_throughput() -> None:
    def pass_of(items: list[int]) -> list[int]:
        time.sleep(0.004 + 0.008 * len(items))
        return items

    observer = RecordingObserver()
    async with DynamicBatcher(pass_of, max_batch_size=8, max_wait=0.0, observer=observer) as batcher:
        assert batcher.latency_plan is None
        await asyncio.gather(*(batcher.submit(i) for i in range(32)))
    assert [e.size for e in observer.batches] == [8, 8, 8, 8]
    assert observer.plans == []
