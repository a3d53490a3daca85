"""A CI-sized soak (``bench/soak.py`` runs the 20,000-request one): requests through the balancer
and two services, zero errors, every process's memory flat after the warm-up, both backends used.

``YOLOSERVE_SOAK_REQUESTS`` changes the count (default 2,000).
"""

from __future__ import annotations

import os

import pytest

from bench.soak import run_soak

pytestmark = pytest.mark.slow

REQUESTS = int(os.environ.get("YOLOSERVE_SOAK_REQUESTS", "2000"))
MAX_GROWTH_PCT = 5.0


def test_soak_through_the_balancer() -> None:
    result = run_soak(requests=REQUESTS, concurrency=16, sample_every=max(50, REQUESTS // 20),
                      warmup=0.2, name="soak_ci")
    summary = result.summary()
    print(summary)
    assert summary["error_count"] == 0, summary
    assert len(result.latencies_ms) == REQUESTS
    assert len(summary["upstreams"]) == 2 and min(summary["upstreams"].values()) > REQUESTS / 5
    growth = result.growth_pct()
    assert set(growth) == {"service_1", "service_2", "balancer"}
    assert all(g <= MAX_GROWTH_PCT for g in growth.values()), growth
