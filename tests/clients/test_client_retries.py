"""Which failures are retried and how: deterministic, on a mock transport and a fake clock."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable

import httpx
import pytest
from conftest import FakeTime, Script, ok, status

from clients import (
    AsyncDetectionClient,
    ClientError,
    ConnectError,
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    RateLimited,
    RetryBudget,
    ServerError,
    Unauthorized,
)

MakeClient = Callable[..., AsyncDetectionClient]
IMAGE = b"\x89PNG\r\n\x1a\nfake"


@pytest.mark.parametrize("code", [429, 502, 503, 504])
async def test_retryable_statuses_are_retried(make_client: MakeClient, code: int) -> None:
    script = Script([status(code), ok("x")])
    result = await make_client(script).detect(IMAGE)
    assert result.image_name == "x"
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (400, InvalidRequest),
        (401, Unauthorized),
        (403, Unauthorized),
        (404, InvalidRequest),
        (413, InvalidRequest),
        (415, InvalidRequest),
        (422, InvalidRequest),
        (500, ServerError),
        (501, ServerError),
    ],
)
async def test_other_failures_are_not(
    make_client: MakeClient, fake_time: FakeTime, code: int, cls: type[ClientError]
) -> None:
    script = Script([status(code, "nope"), ok()])
    with pytest.raises(cls) as caught:
        await make_client(script).detect(IMAGE)
    assert type(caught.value) is cls
    assert caught.value.status == code and caught.value.code == "nope"
    assert len(script.requests) == 1
    assert fake_time.sleeps == []


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("t"),
        httpx.ReadTimeout("t"),
        httpx.WriteTimeout("t"),
        httpx.PoolTimeout("t"),
        httpx.RemoteProtocolError("gone"),
    ],
)
async def test_transport_failures_are_retried(make_client: MakeClient, exc: Exception) -> None:
    script = Script([exc, ok()])
    await make_client(script).detect(IMAGE)
    assert len(script.requests) == 2


async def test_attempts_exhausted_raise_the_last_error_from_httpx(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    script = Script([httpx.ConnectError("refused")])
    with pytest.raises(ConnectError) as caught:
        await make_client(script, max_attempts=3).detect(IMAGE)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(script.requests) == 3
    assert len(fake_time.sleeps) == 2


async def test_backoff_is_exponential_with_full_jitter_and_capped(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    client = make_client(
        Script([status(503)]), max_attempts=5, backoff_base=0.1, backoff_max=0.3, jitter=lambda: 0.5
    )
    with pytest.raises(Overloaded):
        await client.detect(IMAGE)
    assert fake_time.sleeps == pytest.approx([0.05, 0.1, 0.15, 0.15])


async def test_real_jitter_stays_under_the_ceiling(fake_time: FakeTime) -> None:
    client = AsyncDetectionClient(
        "http://x",
        transport=httpx.MockTransport(Script([status(502)])),
        max_attempts=8,
        backoff_base=0.1,
        backoff_max=1.0,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        retry_budget=RetryBudget(max_tokens=100),
    )
    with pytest.raises(ServerError):
        await client.detect(IMAGE)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert all(0 <= s <= c for s, c in zip(fake_time.sleeps, ceilings, strict=True))


async def test_retry_after_seconds_is_the_minimum_wait(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    script = Script(
        [
            status(503, "overloaded", **{"Retry-After": "2"}),
            status(429, "rate_limited", **{"Retry-After": "0"}),
            ok(),
        ]
    )
    await make_client(script, jitter=lambda: 0.0).detect(IMAGE)
    assert fake_time.sleeps == [2.0, 0.0]


async def test_retry_after_below_backoff_does_not_shorten_it(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    script = Script([status(503, **{"Retry-After": "0.01"}), ok()])
    await make_client(script, backoff_base=0.2).detect(IMAGE)
    assert fake_time.sleeps == [0.2]


async def test_retry_after_http_date(make_client: MakeClient, fake_time: FakeTime) -> None:
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    script = Script([status(503, **{"Retry-After": when}), ok()])
    await make_client(script, jitter=lambda: 0.0).detect(IMAGE)
    assert 3.5 <= fake_time.sleeps[0] <= 5.5


async def test_never_sleeps_past_the_deadline(make_client: MakeClient, fake_time: FakeTime) -> None:
    script = Script([status(503, **{"Retry-After": "0.6"})])
    with pytest.raises(Overloaded):
        await make_client(script, timeout=1.0, max_attempts=10).detect(IMAGE)
    assert len(script.requests) == 2  # t=0, t=0.6; a third at t=1.2 would be past the deadline
    assert fake_time.sleeps == [0.6]
    assert fake_time.now <= 1.0


async def test_retry_after_longer_than_the_deadline_fails_at_once(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    script = Script([status(503, **{"Retry-After": "3600"})])
    with pytest.raises(Overloaded) as caught:
        await make_client(script, timeout=10.0).detect(IMAGE)
    assert caught.value.retry_after == 3600
    assert fake_time.sleeps == [] and len(script.requests) == 1


async def test_remaining_deadline_is_sent_on_each_try(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    script = Script([status(503), status(503), ok()])
    await make_client(script, timeout=5.0, backoff_base=0.5).detect(IMAGE)
    assert script.header("x-request-timeout-ms") == ["5000", "4500", "3500"]


async def test_attempt_timeout_caps_the_header(make_client: MakeClient) -> None:
    script = Script([ok()])
    await make_client(script, timeout=5.0, attempt_timeout=0.25).detect(IMAGE)
    assert script.header("x-request-timeout-ms") == ["250"]


async def test_request_id_is_stable_and_attempt_increments(make_client: MakeClient) -> None:
    script = Script([status(502), httpx.ReadTimeout("t"), ok()])
    client = make_client(script)
    await client.detect(IMAGE)
    ids = script.header("x-request-id")
    assert len(set(ids)) == 1 and len(ids[0]) == 32
    assert script.header("x-attempt") == ["1", "2", "3"]
    await client.detect(IMAGE)
    assert script.header("x-request-id")[3] != ids[0]  # a new call, a new id


async def test_error_carries_our_request_id_when_the_server_gives_none(
    make_client: MakeClient,
) -> None:
    script = Script([httpx.ConnectError("refused")])
    with pytest.raises(ConnectError) as caught:
        await make_client(script, max_attempts=1).detect(IMAGE)
    assert caught.value.request_id == script.header("x-request-id")[0]


async def test_budget_stops_retries_multiplying_load(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    script = Script([status(503)])
    # the default budget of a client of at most 4 connections: 10 tokens, retry while > 5
    client = make_client(script, max_attempts=4, max_connections=4)
    errors = []
    for _ in range(20):
        with pytest.raises(Overloaded) as caught:
            await client.detect(IMAGE)
        errors.append(caught.value)
    # call 1: 4 tries (10 -> 6 tokens); call 2: 1 try (-> 5, no more retries); then 1 try each
    assert len(script.requests) == 4 + 19
    assert client.retry_budget.tokens == 0
    assert len(fake_time.sleeps) == 3  # the exhausted calls fail fast, without sleeping
    assert all(error.status == 503 for error in errors)


async def test_budget_refills_on_success(make_client: MakeClient) -> None:
    budget = RetryBudget(max_tokens=4, token_ratio=1.0)
    script = Script([status(503)])
    client = make_client(script, retry_budget=budget)
    for _ in range(3):
        with pytest.raises(Overloaded):
            await client.detect(IMAGE)
    assert budget.tokens == 0 and not budget.allows_retry()
    script.answers = [ok()]
    for _ in range(4):
        await client.detect(IMAGE)
    assert budget.tokens == 4
    before = len(script.requests)
    script.answers = [*[ok()] * before, status(503), ok()]
    await client.detect(IMAGE)
    assert len(script.requests) == before + 2  # retried again


async def test_non_retryable_failures_do_not_spend_the_budget(make_client: MakeClient) -> None:
    client = make_client(Script([status(400)]))
    for _ in range(5):
        with pytest.raises(InvalidRequest):
            await client.detect(IMAGE)
    assert client.retry_budget.tokens == client.retry_budget.max_tokens


async def test_budget_is_shared_between_clients(make_client: MakeClient) -> None:
    budget = RetryBudget(max_tokens=2)
    first = make_client(Script([status(503)]), retry_budget=budget)
    second_script = Script([status(503)])
    second = make_client(second_script, retry_budget=budget)
    with pytest.raises(Overloaded):
        await first.detect(IMAGE)
    with pytest.raises(Overloaded):
        await second.detect(IMAGE)
    assert len(second_script.requests) == 1


async def test_cancellation_propagates_at_once_during_a_request(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    arrived = asyncio.Event()
    requests = 0

    async def hang(request: httpx.Request) -> httpx.Response:
        nonlocal requests
        requests += 1
        arrived.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    task = asyncio.create_task(make_client(hang).detect(IMAGE))
    await arrived.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert requests == 1 and fake_time.sleeps == []
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_cancellation_during_backoff_sends_no_more_tries(make_client: MakeClient) -> None:
    sleeping = asyncio.Event()

    async def sleep_forever(_: float) -> None:
        sleeping.set()
        await asyncio.Event().wait()

    script = Script([status(503), ok()])
    task = asyncio.create_task(make_client(script, sleep=sleep_forever).detect(IMAGE))
    await sleeping.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(script.requests) == 1
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_cancelled_error_from_below_is_not_retried(make_client: MakeClient) -> None:
    script = Script([asyncio.CancelledError(), ok()])
    with pytest.raises(asyncio.CancelledError):
        await make_client(script).detect(IMAGE)
    assert len(script.requests) == 1


async def test_slow_try_is_cut_by_attempt_timeout_and_retried(fake_time: FakeTime) -> None:
    calls = 0

    async def slow_then_fast(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return ok()

    client = AsyncDetectionClient(
        "http://x",
        transport=httpx.MockTransport(slow_then_fast),
        attempt_timeout=0.05,
        sleep=fake_time.sleep,
        jitter=lambda: 0.0,
    )
    started = time.monotonic()
    await client.detect(IMAGE)
    assert calls == 2 and time.monotonic() - started < 2


async def test_overall_deadline_cuts_a_hanging_try(fake_time: FakeTime) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    client = AsyncDetectionClient("http://x", transport=httpx.MockTransport(hang), timeout=0.05)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        await client.detect(IMAGE)
    assert caught.value.code == "deadline_exceeded" and not caught.value.retryable
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert time.monotonic() - started < 2


async def test_deadline_spent_before_a_try(make_client: MakeClient, fake_time: FakeTime) -> None:
    async def slow_clock_sleep(seconds: float) -> None:
        fake_time.now += seconds + 100  # the sleep overran: the deadline passed meanwhile

    script = Script([status(503), ok()])
    with pytest.raises(DeadlineExceeded, match="deadline passed before try 2"):
        await make_client(script, sleep=slow_clock_sleep).detect(IMAGE)
    assert len(script.requests) == 1


async def test_rate_limited_is_overloaded(make_client: MakeClient) -> None:
    with pytest.raises(Overloaded) as caught:
        await make_client(Script([status(429, "rate_limited")]), max_attempts=1).detect(IMAGE)
    assert isinstance(caught.value, RateLimited)


async def test_default_budget_lets_every_call_in_flight_retry_once(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    # 64 calls in flight on a connection that breaks under all of them at once (a backend killed
    # behind a balancer): each gets its retry, none fails for want of budget
    tries: list[str] = []

    async def first_try_fails(request: httpx.Request) -> httpx.Response:
        tries.append(request.headers["x-attempt"])
        return status(502) if request.headers["x-attempt"] == "1" else ok()

    client = make_client(first_try_fails, max_connections=64, jitter=lambda: 0.0)
    assert client.retry_budget.max_tokens == 130
    results = await asyncio.gather(*(client.detect(IMAGE) for _ in range(64)))
    assert len(results) == 64
    assert sorted(tries) == ["1"] * 64 + ["2"] * 64
