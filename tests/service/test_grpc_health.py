"""gRPC health's ``Watch``: the status is pushed when it changes (the models loaded, SIGTERM's
drain begun), not found by a poll, and the watch ends when the server stops; on a real service
process, and the servicer alone."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from harness.procs import await_until, free_port
from tests.support.procs import ServiceProcess

grpc = pytest.importorskip("grpc")

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from service.api.grpc.health import HealthServicer  # noqa: E402
from service.heap import GcPauses  # noqa: E402
from service.metrics import ServiceMetrics  # noqa: E402
from service.runtime.state import AppState, Lifecycle  # noqa: E402
from service.settings import Settings  # noqa: E402

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROMPT_S = 0.5  # a change reaches a watcher well within the old 1 s poll
# a connection attempt every 50 ms: the watch opens while the models load
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                  ("grpc.max_reconnect_backoff_ms", 50)]


async def test_a_change_from_another_thread_wakes_every_watch_at_once() -> None:
    """In the process: a change made off the loop (as by a signal handler) reaches each open
    ``Watch`` within milliseconds, and ``close`` ends them."""
    metrics = ServiceMetrics()
    state = AppState(settings=Settings(), metrics=metrics, rate_limiter=None,
                     gc_pauses=GcPauses(metrics))
    health = HealthServicer(state)
    health.start()
    watches = [health.Watch(health_pb2.HealthCheckRequest(service=name), None)
               for name in ("", "inference.GRPCInferenceService")]
    assert [(await anext(w)).status for w in watches] == [NOT_SERVING] * 2
    state.lifecycle = Lifecycle.READY
    async with asyncio.timeout(PROMPT_S):
        assert [(await anext(w)).status for w in watches] == [SERVING] * 2
    pending = [asyncio.ensure_future(anext(w)) for w in watches]
    changed_at = time.monotonic()
    threading.Thread(target=setattr, args=(state, "lifecycle", Lifecycle.DRAINING)).start()
    async with asyncio.timeout(PROMPT_S):
        assert [(await p).status for p in pending] == [NOT_SERVING] * 2
    assert time.monotonic() - changed_at < 0.1
    health.close()
    async with asyncio.timeout(PROMPT_S):
        for w in watches:
            with pytest.raises(StopAsyncIteration):
                await anext(w)
    state.lifecycle = Lifecycle.STOPPED  # no watcher left: nothing is told
    assert not state._watchers


@asynccontextmanager
async def request_in_flight(port: int) -> AsyncIterator[None]:
    """An upload that has sent its head and not its body: uvicorn waits for it before the
    lifespan's shutdown, so the service stays draining (and its gRPC server up) until it ends."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/detect HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
    await writer.drain()
    try:
        yield
    finally:
        writer.close()


@pytest.mark.slow
async def test_watch_sees_the_load_and_the_drain_as_they_happen() -> None:
    port = free_port()
    proc = ServiceProcess("--model", "demo=models/demo.onnx", "--grpc-port", str(port),
                          "--max-batch-size", "32",  # a longer warm-up: time to watch it
                          env={"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false",
                               "YOLOSERVE_DRAIN_TIMEOUT_S": "20"})
    proc.start(wait=False)  # the gRPC port opens while the models load
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=FAST_RECONNECT) as channel, \
                httpx.AsyncClient(base_url=proc.url, timeout=2) as http:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=120)

            async def http_ready() -> bool:
                proc.check_running()
                try:
                    return (await http.get("/health/ready")).status_code == 200
                except httpx.HTTPError:
                    return False

            # the models load: SERVING comes as /health/ready turns 200, not a poll later
            ready_poll = asyncio.create_task(await_until(http_ready, 90, "/health/ready", every=0.02))
            seen = []
            async with asyncio.timeout(90):
                while not seen or seen[-1] != SERVING:
                    seen.append((await watch.read()).status)
            serving_at = time.monotonic()
            ready_at = await ready_poll
            assert seen[0] == NOT_SERVING and set(seen[:-1]) == {NOT_SERVING}, seen
            assert serving_at - ready_at < PROMPT_S

            # SIGTERM: the drain begins, and the watch says NOT_SERVING at once, while the
            # server still runs (an upload holds the shutdown back)
            async with request_in_flight(proc.port):
                sent_at = time.monotonic()
                proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                answer = await asyncio.wait_for(watch.read(), 10)
                assert answer.status == NOT_SERVING
                assert time.monotonic() - sent_at < PROMPT_S
                still = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert still.status == NOT_SERVING  # the server is up: the drain said so, not its end

            # the upload given up, the server stops: the watch ends (not cancelled after the
            # drain timeout)
            assert await asyncio.wait_for(watch.read(), 15) is grpc.aio.EOF
            assert await watch.code() is grpc.StatusCode.OK
    finally:
        proc.stop()
