"""Weights through a real balancer: a 3:1 split with the default policy, and a re-weight through
the admin API that takes effect at once.

The backends answer after a fixed 20 ms (like a model's forward pass), so that they are equally
fast: least request adapts to speed by design, and two CPU-bound fakes sharing two cores with
the balancer and the client are not equally fast from one moment to the next.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.loadbalancer.harness import BackendProc, LBProc, load, shares, start_backends


@pytest.fixture(scope="module")
def weighted() -> Iterator[tuple[LBProc, BackendProc, BackendProc]]:
    heavy, light = start_backends([BackendProc("heavy", delay_ms=20), BackendProc("light", delay_ms=20)])
    proc = LBProc([f"{heavy.url}=3", light.url]).start().wait_ready()
    yield proc, heavy, light
    proc.stop()
    heavy.stop()
    light.stop()


async def test_weights_3_to_1_split_4000_requests(
    weighted: tuple[LBProc, BackendProc, BackendProc],
) -> None:
    proc, heavy, light = weighted
    results = await load(proc.url + "/v1/detect", total=4000, concurrency=16)
    assert {r.status for r in results} == {200}
    split = shares(results)
    assert abs(split[heavy.id] - 0.75) <= 0.03, split
    assert abs(split[light.id] - 0.25) <= 0.03, split


async def test_reweighting_takes_effect_within_a_second(
    weighted: tuple[LBProc, BackendProc, BackendProc],
) -> None:
    proc, _, light = weighted
    response = proc.admin("PATCH", f"/lb/backends/{light.id}", {"weight": 3})
    assert response.status_code == 200 and response.json()["weight"] == 3
    patched_at = time.monotonic()
    results = await load(proc.url + "/v1/detect", duration=1.0, concurrency=16)
    assert results[0].started - patched_at < 0.5
    split = shares(results)
    assert len(results) > 200 and abs(split[light.id] - 0.5) <= 0.07, (len(results), split)
    assert [b["effective_weight"] for b in proc.status()["backends"]] == [3.0, 3.0]
