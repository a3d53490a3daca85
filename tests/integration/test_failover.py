"""Acceptance: 2,000 images through ``detect_many`` (concurrency 64) and the real balancer while one
of its two real backends is SIGKILLed and started again on its port: every image gets its correct
result, and the client sends fewer than 1.3 tries per image."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from clients import AsyncDetectionClient, ItemError, ItemResult, Progress
from tests.integration.stack import (
    START_TIMEOUT,
    CountingTransport,
    Fleet,
    LBProc,
    differences,
    lb_backend,
    lb_counters,
    wait_routed,
)
from wire.schemas import DetectionResult

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IMAGES = 2000
CONCURRENCY = 64
KILL_AFTER = 400  # results in before b is SIGKILLed: b has requests in flight then
GATE_AT = 1200  # input images from here on wait until the balancer routes to the new b
MAX_TRIES_PER_IMAGE = 1.3


class Chaos:
    """Kills b once ``KILL_AFTER`` results are in, starts it again on its port, and notes when it
    is ready and when the balancer routes to it again."""

    def __init__(self, fleet: Fleet, lb: LBProc) -> None:
        self.fleet, self.lb = fleet, lb
        self.go = asyncio.Event()
        self.times: dict[str, float] = {}
        self.b_url = fleet.url("b")
        self.b_before_kill: dict[str, Any] = {}
        self.b_requests_back = 0

    def on_progress(self, progress: Progress) -> None:
        if progress.completed >= KILL_AFTER:
            self.go.set()

    async def run(self) -> None:
        await self.go.wait()
        self.b_before_kill = await lb_backend(self.lb, self.b_url)
        self.fleet.kill("b")
        self.times["killed"] = time.monotonic()
        new_b = self.fleet.restart("b")
        assert new_b.proc is not None
        self.times["ready"] = await new_b.wait_ready_async(START_TIMEOUT)
        self.times["routed"] = await wait_routed(self.lb, self.b_url, within=60.0)
        self.b_requests_back = (await lb_backend(self.lb, self.b_url))["totals"]["requests"]


async def _feed(paths: list[Path], chaos_task: asyncio.Task[None]) -> AsyncIterator[Path]:
    for i in range(IMAGES):
        if i == GATE_AT:  # the rest goes once b is back, so that it takes part again
            await asyncio.wait({chaos_task})
            chaos_task.result()  # its failure, if any, ends the run here
        yield paths[i % len(paths)]


async def test_2000_images_survive_a_backend_kill_and_restart(
    fleet: Fleet,
    lb_pair: LBProc,
    image_paths: list[Path],
    reference: dict[bytes, DetectionResult],
) -> None:
    expected = {path: reference[path.read_bytes()] for path in image_paths}
    chaos = Chaos(fleet, lb_pair)
    transport = CountingTransport(max_connections=CONCURRENCY)
    outcomes: list[ItemResult | ItemError] = []
    chaos_task = asyncio.create_task(chaos.run())
    started = time.monotonic()
    try:
        async with AsyncDetectionClient(lb_pair.url, timeout=60.0, transport=transport) as client:
            stream = client.detect_many(
                _feed(image_paths, chaos_task), concurrency=CONCURRENCY, on_progress=chaos.on_progress
            )
            async with aclosing(stream):
                async for outcome in stream:
                    outcomes.append(outcome)
        elapsed = time.monotonic() - started
        await chaos_task
        b_after = await lb_backend(lb_pair, chaos.b_url)
        lb_after = await lb_counters(lb_pair)
    finally:
        chaos_task.cancel()
        fleet.ensure_ready("b")

    tries = transport.tries["/v1/detect"]
    failures = [(o.index, str(o.error)) for o in outcomes if isinstance(o, ItemError)]
    t = chaos.times
    latencies = sorted(o.latency_s for o in outcomes)
    exact = sum(
        isinstance(o, ItemResult)
        and isinstance(o.input, Path)
        and o.result.detections == expected[o.input].detections
        for o in outcomes
    )
    lb_retries = {k: v for k, v in lb_after.items() if "retr" in k and v}
    print(
        f"\nfailover: {len(outcomes)} images in {elapsed:.1f}s ({IMAGES / elapsed:.1f}/s), "
        f"{len(failures)} failed; client tries {tries} ({tries / IMAGES:.3f} per image, "
        f"{transport.retries} retries); b in flight at the kill: {chaos.b_before_kill['inflight']}; "
        f"b ready {t['ready'] - t['killed']:.1f}s and routed {t['routed'] - t['killed']:.1f}s "
        f"after the kill; b's balancer totals after: {b_after['totals']}; balancer retries "
        f"{lb_retries}; latency p50 {latencies[len(latencies) // 2]:.2f}s max {latencies[-1]:.2f}s;"
        f" {exact} results exactly equal to the reference"
    )
    assert failures == [], f"{len(failures)} images failed, first: {failures[:5]}"
    assert sorted(o.index for o in outcomes) == list(range(IMAGES))
    for outcome in outcomes:
        assert isinstance(outcome, ItemResult)
        assert isinstance(outcome.input, Path)
        problems = differences(outcome.result, expected[outcome.input])
        assert problems == [], f"image {outcome.index} ({outcome.input.name}): {problems}"

    assert tries < MAX_TRIES_PER_IMAGE * IMAGES, f"{tries} tries for {IMAGES} images"
    # the fault was real: b was taking requests when killed, and took some again once back
    assert chaos.b_before_kill["totals"]["requests"] > 0
    assert b_after["totals"]["requests"] > chaos.b_requests_back, b_after
