"""Faults, with real backends that misbehave: overload (503 + Retry-After), hangs, death, and an
admin drain. One balancer for the module; each test sets its backends through the admin API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.procs import await_until, free_port, wait_until
from tests.loadbalancer.harness import BackendProc, LBProc, load, start_backends

PER_TRY = 1.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[dict[str, BackendProc]]:
    procs = [
        BackendProc("ok1"),
        BackendProc("ok2"),
        BackendProc("over1", mode="overloaded"),
        BackendProc("over2", mode="overloaded"),
        BackendProc("hang", mode="hang"),
        BackendProc("slow", delay_ms=500),
        BackendProc("cut", mode="cut"),
    ]
    start_backends(procs)
    yield {p.name: p for p in procs}
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def lb(fleet: dict[str, BackendProc]) -> Iterator[LBProc]:
    proc = LBProc(
        (),
        "--health-interval",
        "0.2",
        "--per-try-timeout",
        str(PER_TRY),
        "--outlier-consecutive-failures",
        "3",
        "--outlier-base-ejection",
        "2",
        "--slow-start-window",
        "0",
        "--unhealthy-threshold",
        "1",
    )
    proc.start().wait_ready()
    yield proc
    proc.stop()


def use(lb: LBProc, *backends: BackendProc | str, health: dict[str, str] | None = None) -> None:
    """Sets the balancer's backends and waits for the health each one should show."""
    lb.set_backends(backends)
    expected = {(b if isinstance(b, str) else b.url).removeprefix("http://"): "healthy" for b in backends}
    expected.update(health or {})
    wait_until(
        lambda: {b["id"]: b["health"] for b in lb.status()["backends"]} == expected,
        10.0,
        f"backend health {expected}",
    )


def metric(lb: LBProc, name: str, **labels: str) -> float:
    families = text_string_to_metric_families(lb.admin("GET", "/metrics").text)
    return sum(
        s.value
        for f in families
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_overloaded_backend_sheds_load_to_the_others(lb: LBProc, fleet: dict[str, BackendProc]) -> None:
    over, ok = fleet["over1"], fleet["ok1"]
    use(lb, over, ok, health={over.id: "overloaded"})
    results = await load(lb.url + "/v1/detect", total=300, concurrency=8)
    assert [r.status for r in results if r.status != 200] == []
    assert {r.upstream for r in results} == {ok.id}


def test_every_backend_overloaded_passes_the_503_through(lb: LBProc, fleet: dict[str, BackendProc]) -> None:
    a, b = fleet["over1"], fleet["over2"]
    use(lb, a, b, health={a.id: "overloaded", b.id: "overloaded"})
    response = httpx.post(lb.url + "/v1/detect", content=b"x")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-upstream"] in (a.id, b.id)
    assert response.json()["error"]["code"] == "overloaded"


async def test_hanging_backend_times_out_per_try_and_succeeds_elsewhere(
    lb: LBProc, fleet: dict[str, BackendProc]
) -> None:
    hang, ok = fleet["hang"], fleet["ok1"]
    use(lb, hang, ok)
    timeouts_before = metric(lb, "yoloserve_lb_retries_total", reason="timeout")
    deadline_ms = 4000
    results = await load(
        lb.url + "/v1/detect",
        total=24,
        concurrency=6,
        headers={"X-Request-Timeout-Ms": str(deadline_ms)},
    )
    assert [r.status for r in results] == [200] * 24
    assert {r.upstream for r in results} == {ok.id}
    assert max(r.ended - r.started for r in results) < deadline_ms / 1000
    assert metric(lb, "yoloserve_lb_retries_total", reason="timeout") > timeouts_before
    # Timeouts in a row ejected the hanging backend.
    assert lb.backend(hang.id)["totals"]["errors"].get("timeout", 0) >= 1


def test_an_answer_cut_before_any_of_it_reached_the_client_is_retried(
        lb: LBProc, fleet: dict[str, BackendProc]) -> None:
    use(lb, fleet["cut"], fleet["ok1"])
    before = metric(lb, "yoloserve_lb_retries_total")
    with httpx.Client(base_url=lb.url, timeout=10.0) as client:
        answers = [client.post("/v1/detect", content=b"img") for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.json()["backend"] for a in answers} == {"ok1"}
    assert metric(lb, "yoloserve_lb_retries_total") > before  # the cut ones were tried again


def test_all_backends_down_gives_a_clear_502_quickly(lb: LBProc) -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    use(lb, *dead, health={d.removeprefix("http://"): "unhealthy" for d in dead})
    started = time.monotonic()
    response = httpx.post(
        lb.url + "/v1/detect",
        content=b"x",
        headers={"X-Request-Timeout-Ms": "5000", "X-Request-ID": "dead-1"},
    )
    assert time.monotonic() - started < 2.0
    assert response.status_code == 502
    assert response.json()["error"] == {
        "code": "no_healthy_backend",
        "request_id": "dead-1",
        "message": response.json()["error"]["message"],
    }
    assert "attempt" in response.json()["error"]["message"]


def test_deadline_passing_gives_504(lb: LBProc, fleet: dict[str, BackendProc]) -> None:
    use(lb, fleet["hang"])
    started = time.monotonic()
    response = httpx.post(lb.url + "/v1/detect", content=b"x", headers={"X-Request-Timeout-Ms": "300"})
    elapsed = time.monotonic() - started
    assert response.status_code == 504 and 0.25 < elapsed < 1.5
    assert response.json()["error"]["code"] == "deadline_exceeded"


async def test_draining_a_backend_finishes_its_requests_and_sends_it_no_more(
    lb: LBProc, fleet: dict[str, BackendProc]
) -> None:
    slow, ok = fleet["slow"], fleet["ok1"]
    use(lb, slow, ok)
    async with aiohttp.ClientSession(lb.url) as session:

        async def post() -> tuple[int, str | None]:
            async with session.post("/v1/detect", data=b"x") as response:
                await response.read()
                return response.status, response.headers.get("X-Upstream")

        early = [asyncio.create_task(post()) for _ in range(8)]
        await await_until(lambda: _inflight(lb, slow.id), 5.0, "requests in flight on slow")
        response = await asyncio.to_thread(lb.admin, "PATCH", f"/lb/backends/{slow.id}", {"drain": True})
        assert response.status_code == 200 and response.json()["state"] == "draining"
        later = await load(lb.url + "/v1/detect", total=40, concurrency=4)
        finished = await asyncio.gather(*early)
    assert {r.upstream for r in later} == {ok.id} and {r.status for r in later} == {200}
    assert {status for status, _ in finished} == {200}
    assert any(upstream == slow.id for _, upstream in finished)  # in flight, then finished
    assert lb.backend(slow.id)["inflight"] == 0


async def _inflight(lb: LBProc, backend_id: str) -> bool:
    status = await asyncio.to_thread(lb.backend, backend_id)
    return bool(status["inflight"] >= 1)


async def test_the_per_try_timeout_follows_recent_answers(fleet: dict[str, BackendProc]) -> None:
    """With the default per-try timeout (10 s, as long as a client's whole deadline), a try on a
    backend that went silent is given up after a few times the recent p99, not after 10 s."""
    hang, ok = fleet["hang"], fleet["ok2"]
    lb = LBProc((), "--health-interval", "0.2", "--slow-start-window", "0").start().wait_ready()
    try:
        use(lb, ok)
        warm = await load(lb.url + "/v1/detect", total=96, concurrency=4)
        assert [r.status for r in warm] == [200] * 96
        use(lb, hang, ok)
        results = await load(lb.url + "/v1/detect", total=12, concurrency=4,
                             headers={"X-Request-Timeout-Ms": "8000"})
        assert [r.status for r in results] == [200] * 12
        # the floor is 1 s (per_try_timeout_min); 10 s would be the fixed timeout
        assert max(r.ended - r.started for r in results) < 4.0
        assert lb.backend(hang.id)["totals"]["errors"].get("timeout", 0) >= 1
    finally:
        lb.stop()
