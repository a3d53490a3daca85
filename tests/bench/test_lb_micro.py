"""``bench lb_micro`` drives the balancer's real protocols on fake transports: every request is
answered with a 200, and both sides write once per request (a small answer leaves in one write,
a forwarded request's head and body go together)."""

from __future__ import annotations

import asyncio

from bench.lb_micro import run


def test_every_request_is_answered_in_one_write_each_way() -> None:
    result = asyncio.run(run(requests=1280, connections=64, repeats=2))
    assert result["requests"] == 1280
    assert result["statuses"] == {200: 1280 * 2 + 64 * 2}  # the repeats and the warm-up rounds
    assert result["client_writes_per_request"] == 1.0
    assert result["backend_writes_per_request"] == 1.0
    assert result["us_per_request_best"] > 0
