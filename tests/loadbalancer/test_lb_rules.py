"""Per-backend and cluster rules: slow start, overload, ejection, panic, back-off, health
thresholds, and the retry budget. Plain objects, explicit clocks."""

from __future__ import annotations

import asyncio
import time

import pytest

from loadbalancer.backend import Backend, Health, Tuning
from loadbalancer.budget import RetryBudget
from loadbalancer.cluster import Cluster
from loadbalancer.errors import BackendExists, BackendNotFound
from loadbalancer.policies import make_policy
from loadbalancer.settings import BackendSpec

TUNING = Tuning(
    healthy_threshold=2,
    unhealthy_threshold=2,
    consecutive_failures=3,
    base_ejection=10.0,
    max_ejection=25.0,
    slow_start_window=10.0,
)


def spec(i: int, weight: int = 1) -> BackendSpec:
    return BackendSpec(url=f"http://10.0.0.{i}:8000", weight=weight)


def cluster(n: int, **kwargs: float) -> Cluster:
    c = Cluster(make_policy("round_robin"), TUNING, **kwargs)
    for i in range(1, n + 1):
        c.add(spec(i), 0.0, warm=True)
    return c


def test_slow_start_ramps_from_the_floor_to_full_weight() -> None:
    backend = Backend(spec(1, weight=4), TUNING, now=100.0, warm=False)
    assert backend.effective_weight(100.0) == pytest.approx(0.4)  # 10% floor
    assert backend.effective_weight(105.0) == pytest.approx(2.0)  # half-way
    assert backend.effective_weight(110.0) == pytest.approx(4.0)
    assert Backend(spec(2, 4), TUNING, now=100.0, warm=True).effective_weight(100.0) == 4.0


def test_overloaded_backend_gets_a_reduced_weight() -> None:
    backend = Backend(spec(1, weight=4), TUNING, now=0.0, warm=True)
    backend.apply_probe(Health.OVERLOADED, 1.0)
    assert backend.routable(1.0)
    assert backend.effective_weight(1.0) == pytest.approx(1.0)


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    backend = Backend(spec(1), TUNING, now=0.0, warm=True)
    assert backend.eject(0.0) == 10.0
    assert not backend.routable(5.0) and backend.routable(10.0)
    assert backend.eject(11.0) == 20.0
    assert backend.eject(32.0) == 25.0  # 30 capped at 25
    assert backend.effective_weight(57.0) == pytest.approx(0.1)  # back in slow start


def test_consecutive_failures_eject_and_success_resets_the_count() -> None:
    c = cluster(4)
    backend = c.get("10.0.0.1:8000")
    for _ in range(2):
        c.report_failure(backend, "connect", 1.0, outlier=True)
    backend.consecutive_failures = 0  # a success in between
    for _ in range(2):
        c.report_failure(backend, "connect", 1.0, outlier=True)
    assert not backend.ejected(1.0)
    c.report_failure(backend, "connect", 1.0, outlier=True)
    assert backend.ejected(1.0)
    assert backend.errors == {"connect": 5}


def test_max_ejection_percent_caps_ejections_but_allows_one() -> None:
    c = cluster(4, max_ejection_percent=50.0)
    for backend in c.backends.values():
        for _ in range(3):
            c.report_failure(backend, "reset", 1.0, outlier=True)
    assert sum(b.ejected(1.0) for b in c.backends.values()) == 2
    small = cluster(2, max_ejection_percent=10.0)
    for backend in small.backends.values():
        for _ in range(3):
            small.report_failure(backend, "reset", 1.0, outlier=True)
    assert sum(b.ejected(1.0) for b in small.backends.values()) == 1


def test_non_outlier_failures_do_not_eject() -> None:
    c = cluster(2)
    backend = c.get("10.0.0.1:8000")
    for _ in range(10):
        c.report_failure(backend, "stale", 1.0, outlier=False)
    assert not backend.ejected(1.0)


def test_panic_routes_to_all_willing_backends_below_the_threshold() -> None:
    c = cluster(4, panic_threshold=50.0)
    b1, b2, b3, b4 = c.backends.values()
    c.report_probe(b1, Health.UNHEALTHY, 1.0)  # unknown -> unhealthy at the first failure
    assert {b.id for b in c.candidates(1.0)} == {b2.id, b3.id, b4.id} and not c.panic
    c.report_probe(b2, Health.UNHEALTHY, 1.0)
    c.report_probe(b3, Health.DRAINING, 1.0)
    # 1 of 4 healthy < 50%: panic, everyone but the one that asked for no traffic.
    assert {b.id for b in c.candidates(1.0)} == {b1.id, b2.id, b4.id} and c.panic


def test_admin_drain_and_backoff_are_respected_by_choose() -> None:
    c = cluster(2)
    b1, b2 = c.backends.values()
    c.update(b1.id, weight=None, drain=True)
    assert all(c.choose(1.0) is b2 for _ in range(5))
    c.update(b1.id, weight=3, drain=False)
    c.back_off(b2, 5.0, 1.0)
    assert all(c.choose(2.0) is b1 for _ in range(5))
    assert c.choose(2.0, [b1]) is b2  # last resort: a backing-off one
    assert c.choose(2.0, [b1], allow_backoff=False) is None
    assert c.choose(7.0, [b1]) is b2


def test_health_thresholds_and_recovery_into_slow_start() -> None:
    backend = Backend(spec(1), TUNING, now=0.0, warm=True)
    assert backend.apply_probe(Health.HEALTHY, 0.0) is Health.HEALTHY
    assert backend.apply_probe(Health.UNHEALTHY, 1.0) is None  # 1 of 2 failures
    assert backend.apply_probe(Health.UNHEALTHY, 2.0) is Health.UNHEALTHY
    assert not backend.routable(2.0)
    assert backend.apply_probe(Health.HEALTHY, 3.0) is None  # 1 of 2 passes
    assert backend.apply_probe(Health.HEALTHY, 4.0) is Health.HEALTHY
    assert backend.effective_weight(4.0) == pytest.approx(0.1)  # slow start from here
    assert backend.apply_probe(Health.DRAINING, 5.0) is Health.DRAINING  # at once
    assert not backend.routable(5.0)


def test_a_passing_health_check_un_ejects() -> None:
    backend = Backend(spec(1), TUNING, now=0.0, warm=True)
    backend.apply_probe(Health.HEALTHY, 0.0)
    backend.eject(1.0)
    backend.apply_probe(Health.HEALTHY, 2.0)
    assert backend.routable(2.0) and backend.effective_weight(2.0) == pytest.approx(0.1)


def test_cluster_changes_and_reconcile() -> None:
    c = cluster(2)
    with pytest.raises(BackendExists):
        c.add(spec(1), 0.0)
    with pytest.raises(BackendNotFound):
        c.remove("nope:1")
    removed = c.remove("10.0.0.2:8000")
    assert removed.removed and not removed.routable(0.0)
    added, gone, updated = c.reconcile([spec(1, weight=5), spec(3)], 1.0)
    assert (added, gone, updated) == (1, 0, 1)
    assert c.get("10.0.0.1:8000").weight == 5
    assert c.get("10.0.0.3:8000").effective_weight(1.0) == pytest.approx(0.1)  # slow start


def test_retry_budget_limit_is_a_share_of_active_requests_with_a_floor() -> None:
    budget = RetryBudget(percent=20.0, min_concurrency=3, max_wait=0.0)
    for _ in range(10):
        budget.enter()
    assert budget.limit == 3
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    for _ in range(30):
        budget.enter()
    assert budget.limit == 8 and budget.try_acquire()


async def test_retry_budget_queues_a_retry_until_a_slot_frees() -> None:
    budget = RetryBudget(percent=0.0, min_concurrency=1, max_wait=5.0)
    budget.enter()
    budget.enter()
    assert budget.try_acquire()
    waiter = asyncio.create_task(budget.acquire(time.monotonic() + 5.0))
    await asyncio.sleep(0)  # let it queue
    assert not waiter.done()
    budget.release()
    assert await asyncio.wait_for(waiter, 1.0) is True
    assert budget.active_retries == 1


async def test_retry_budget_wait_is_bounded() -> None:
    budget = RetryBudget(percent=0.0, min_concurrency=1, max_wait=0.05)
    budget.enter()
    budget.enter()
    assert budget.try_acquire()
    started = time.monotonic()
    assert await budget.acquire(time.monotonic() + 5.0) is False
    assert time.monotonic() - started < 1.0
