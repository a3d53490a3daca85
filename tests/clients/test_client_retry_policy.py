"""Backoff, Retry-After parsing and the retry budget, as plain functions."""

from __future__ import annotations

import email.utils
import time

import pytest

from clients import Backoff, RetryBudget, parse_retry_after
from clients._retry import RetryPolicy


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=1.0)
    ceilings = [backoff.ceiling(n) for n in range(1, 7)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.ceiling(0) == pytest.approx(0.1)
    assert backoff.ceiling(10_000) == 1.0  # no overflow


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.999])
def test_full_jitter_stays_in_bounds(jitter: float) -> None:
    backoff = Backoff(base=0.2, cap=5.0)
    for attempt in range(1, 12):
        delay = backoff.delay(attempt, jitter)
        assert 0.0 <= delay <= backoff.ceiling(attempt)
        assert delay == pytest.approx(jitter * backoff.ceiling(attempt))


def test_backoff_rejects_negatives() -> None:
    with pytest.raises(ValueError, match="negative"):
        Backoff(base=-1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("inf", None),
        ("nan", None),
        ("soon", None),
        ("Mon, 99 Foo 2020 99:99:99 GMT", None),
    ],
)
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1000.0) == expected


def test_retry_after_http_date() -> None:
    now = time.time()
    future = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(future, now=now) == pytest.approx(30, abs=1.01)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    naive = email.utils.formatdate(now + 30).replace("+0000", "-0000")
    assert parse_retry_after(naive, now=now) == pytest.approx(30, abs=1.01)


def test_budget_drains_and_refills_like_grpc_throttling() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.5)
    assert budget.allows_retry()
    for _ in range(4):
        budget.record_failure()
    assert budget.tokens == 6 and budget.allows_retry()
    budget.record_failure()
    assert budget.tokens == 5 and not budget.allows_retry()  # retries only while tokens > max/2
    for _ in range(20):
        budget.record_failure()
    assert budget.tokens == 0
    for _ in range(11):
        budget.record_success()
    assert budget.tokens == 5.5 and budget.allows_retry()
    for _ in range(100):
        budget.record_success()
    assert budget.tokens == 10
    assert repr(budget) == "RetryBudget(tokens=10/10)"


def test_budget_for_concurrency_has_room_for_one_retry_per_call_in_flight() -> None:
    assert RetryBudget.for_concurrency(1).max_tokens == 10  # gRPC's usual 10 at least
    budget = RetryBudget.for_concurrency(64)
    assert budget.max_tokens == 130 and budget.token_ratio == 0.1
    for _ in range(64):  # all 64 calls fail at once: each may still retry
        budget.record_failure()
    assert budget.allows_retry()
    budget.record_failure()
    assert not budget.allows_retry()


def test_budget_validates() -> None:
    with pytest.raises(ValueError, match="positive"):
        RetryBudget(max_tokens=0)


async def test_policy_validates() -> None:
    async def sleep(_: float) -> None: ...

    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(0, Backoff(), RetryBudget(), sleep, lambda: 0.0, time.monotonic)
