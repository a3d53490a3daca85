"""Acceptance: with the only backend behind the real balancer down for 10 s, calls fail fast once
the client's retry budget is spent, and succeed again within a second of the backend's return."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients import AsyncDetectionClient, ClientError, RetryBudget
from tests.integration.stack import START_TIMEOUT, CountingTransport, Fleet, LBProc, start_lb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DOWN_FOR = 10.0
CALL_TIMEOUT = 10.0
FAST = 1.0  # seconds: a call that makes one try and no wait; a tenth of the call's timeout
RECOVERY = 1.0  # seconds from the backend's readiness to the first success through the balancer
PAUSE = 0.05  # between one caller's calls (its pace, not a synchronisation)


@dataclass(frozen=True, slots=True)
class Call:
    started: float
    ended: float
    tries: int
    error: ClientError | None
    tokens_after: float

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@pytest.fixture(scope="module")
def lb_b(fleet: Fleet) -> Iterator[LBProc]:
    """The real balancer, default settings, with ``b`` as its only backend."""
    lb = start_lb(fleet.url("b"))
    try:
        yield lb
    finally:
        lb.stop()


async def _call(client: AsyncDetectionClient, image: bytes, transport: CountingTransport) -> Call:
    tries = transport.tries["/v1/detect"]
    started = time.monotonic()
    error = None
    try:
        await client.detect(image)
    except ClientError as exc:
        error = exc
    return Call(started, time.monotonic(), transport.tries["/v1/detect"] - tries, error,
                client.retry_budget.tokens)


async def test_outage_fails_fast_once_the_budget_is_spent_and_recovers_within_a_second(
    fleet: Fleet, lb_b: LBProc, image_paths: list[Path]
) -> None:
    image = image_paths[0].read_bytes()
    transport = CountingTransport(max_connections=4)
    budget = RetryBudget()  # one caller: gRPC's usual 10 tokens, retries while more than 5
    client = AsyncDetectionClient(
        lb_b.url, timeout=CALL_TIMEOUT, max_attempts=4, retry_budget=budget, transport=transport
    )
    ready: asyncio.Task[float] | None = None
    try:
        async with client:
            for _ in range(3):
                assert (await _call(client, image, transport)).error is None  # it works at first
            fleet.kill("b")
            down_at = time.monotonic()
            outage: list[Call] = []
            while time.monotonic() - down_at < DOWN_FOR:
                outage.append(await _call(client, image, transport))
                await asyncio.sleep(PAUSE)
            new_b = fleet.restart("b")
            assert new_b.proc is not None
            ready = asyncio.create_task(new_b.wait_ready_async(START_TIMEOUT))
            while (call := await _call(client, image, transport)).error is not None:
                outage.append(call)
                if ready.done():
                    ready.result()  # b died or never got ready: that failure ends the test
                assert time.monotonic() - down_at < START_TIMEOUT + 60, "never recovered"
                await asyncio.sleep(PAUSE)
            back = call
            ready_at = await ready
            after = [await _call(client, image, transport) for _ in range(5)]
    finally:
        if ready is not None:
            ready.cancel()
        fleet.ensure_ready("b")

    spent = next(i for i, c in enumerate(outage) if c.tokens_after <= budget.max_tokens / 2)
    fast = outage[spent + 1:]
    seconds = [c.seconds for c in fast]
    print(
        f"\noutage: {len(outage)} failed calls over {outage[-1].ended - down_at:.1f}s; budget "
        f"spent after call {spent + 1} (first call {outage[0].seconds:.2f}s, {outage[0].tries} "
        f"tries); then {len(fast)} calls of 1 try: median {statistics.median(seconds) * 1000:.1f} ms,"
        f" max {max(seconds) * 1000:.1f} ms; first success {back.ended - ready_at:+.3f}s from the "
        f"backend's readiness ({ready_at - down_at:.1f}s after the kill); "
        f"codes {sorted({c.error.code for c in outage if c.error})}"
    )
    assert all(c.error is not None and c.error.retryable for c in outage)
    assert outage[0].tries > 1 and outage[0].seconds < CALL_TIMEOUT  # retried, within its deadline
    assert spent <= 2, [c.tries for c in outage[:5]]  # 5 failed tries spend 10 tokens' budget
    assert len(fast) > 20
    assert all(c.tries == 1 for c in fast), [c.tries for c in fast]
    assert max(seconds) < FAST and statistics.median(seconds) < FAST / 10, seconds
    assert back.ended - ready_at < RECOVERY
    assert all(c.error is None for c in after)
