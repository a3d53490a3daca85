"""The retry state the WebSocket handshake shares with plain requests, through a real
``python -m loadbalancer``: a handshake retried on another backend is charged to the retry
budget (and gives its slot back once answered), and an error that is not retryable ends the
handshake instead of trying the next backend.

The backend that fails handshakes is a small TCP server on loopback (:class:`HandshakeTrap`):
healthy to the balancer's probes, it fails every upgrade as told and counts them, which no
HTTP framework would let a backend do (close without an answer, answer bytes that are not
HTTP). Which backend a stream's handshake tries first is its owner on the ring."""

from __future__ import annotations

import itertools
import json
import socketserver
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from loadbalancer.hashing import Ring, key_hash
from tests.loadbalancer.harness import BackendProc, LBProc, start_backends
from wire import errors as codes

HEAD_LIMIT = 65_536


class _TrapHandler(socketserver.BaseRequestHandler):
    server: HandshakeTrap

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < HEAD_LIMIT:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        if b"upgrade: websocket" not in head.lower():  # a health probe
            body = json.dumps({"status": "ready", "queue_depth": 0, "inflight_batches": 0}).encode()
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            return
        self.server.count_handshake()
        if self.server.mode == "garbage":
            self.request.sendall(b"SSH-2.0-not-http\r\n\r\n")
        # "reset": closed without an answer


class HandshakeTrap(socketserver.ThreadingTCPServer):
    """A backend on 127.0.0.1 that answers health probes and fails every WebSocket handshake:
    ``mode`` "reset" closes the connection without an answer (retryable), "garbage" answers
    bytes that are not HTTP (not retryable)."""

    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _TrapHandler)
        self.mode = mode
        self._handshakes = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, name=f"trap-{mode}", daemon=True)
        self._thread.start()

    @property
    def id(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.id}"

    def count_handshake(self) -> None:
        with self._lock:
            self._handshakes += 1

    @property
    def handshakes(self) -> int:
        with self._lock:
            return self._handshakes

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5.0)


@pytest.fixture(scope="module")
def alive() -> Iterator[BackendProc]:
    (backend,) = start_backends([BackendProc("ws-alive")])
    yield backend
    backend.stop()


@pytest.fixture
def reset_trap() -> Iterator[HandshakeTrap]:
    trap = HandshakeTrap("reset")
    yield trap
    trap.stop()


@pytest.fixture
def garbage_trap() -> Iterator[HandshakeTrap]:
    trap = HandshakeTrap("garbage")
    yield trap
    trap.stop()


def balancer(trap: HandshakeTrap, alive: BackendProc, *args: str) -> LBProc:
    """A ring-hash balancer in front of the trap and a good backend, health checked once."""
    lb = LBProc([trap.url, alive.url], "--policy", "ring_hash", "--health-interval", "60", *args)
    return lb.start().wait_ready()


def retry_slots(n: int) -> tuple[str, ...]:
    """Flags for a retry budget of exactly ``n`` concurrent retries, none of them waiting."""
    return ("--retry-budget-min", str(n), "--retry-budget-percent", "0", "--retry-budget-wait", "0")


def streams_owned_by(owner: str, trap: HandshakeTrap, alive: BackendProc) -> Iterator[str]:
    """Stream ids whose handshake tries ``owner`` first (their owner on the balancer's ring)."""
    ring = Ring([(trap.id, 1), (alive.id, 1)])
    for i in itertools.count():
        stream = f"cam-{i}"
        if ring.owner(key_hash(stream.encode())) == owner:
            yield stream


def ws_url(lb: LBProc, stream: str) -> str:
    return lb.url.replace("http://", "ws://") + f"/v1/streams/{stream}/ws"


def metric(lb: LBProc, name: str, **labels: str) -> float:
    families = text_string_to_metric_families(httpx.get(lb.admin_url + "/metrics", timeout=5.0).text)
    return sum(
        s.value
        for f in families
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_a_retried_handshake_is_charged_to_the_retry_budget(
    reset_trap: HandshakeTrap, alive: BackendProc
) -> None:
    # no retry slot at all: the handshake the trap resets is not tried on the good backend
    lb = balancer(reset_trap, alive, *retry_slots(0))
    try:
        stream = next(streams_owned_by(reset_trap.id, reset_trap, alive))
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(lb, stream)):
                pass
        response = refused.value.response
        assert response.status_code == 502
        error = json.loads(response.body or b"{}")["error"]
        assert error["code"] == codes.NO_HEALTHY_BACKEND.code
        assert "retry budget exhausted" in error["message"]
        assert reset_trap.handshakes == 1
        assert metric(lb, "yoloserve_lb_retry_budget_exhausted_total") == 1
        assert metric(lb, "yoloserve_lb_retries_total") == 0
        assert metric(lb, "yoloserve_lb_websockets_total", outcome="failed") == 1
    finally:
        lb.stop()


async def test_a_retried_handshake_gives_its_budget_slot_back_once_answered(
    reset_trap: HandshakeTrap, alive: BackendProc
) -> None:
    # one retry slot: held from the retry until the handshake is answered, not while the
    # WebSocket stays open, so a second retried handshake gets it too
    lb = balancer(reset_trap, alive, *retry_slots(1))
    try:
        first, second = itertools.islice(streams_owned_by(reset_trap.id, reset_trap, alive), 2)
        async with connect(ws_url(lb, first)) as one, connect(ws_url(lb, second)) as two:
            for ws in (one, two):
                assert ws.response is not None
                assert ws.response.headers["X-Upstream"] == alive.id
                await ws.send("hello")
                assert json.loads(await ws.recv())["backend"] == "ws-alive"
        assert reset_trap.handshakes == 2
        assert metric(lb, "yoloserve_lb_retries_total", reason="reset") == 2
        assert metric(lb, "yoloserve_lb_retry_budget_exhausted_total") == 0
    finally:
        lb.stop()


async def test_a_handshake_error_that_is_not_retryable_is_not_retried(
    garbage_trap: HandshakeTrap, alive: BackendProc
) -> None:
    lb = balancer(garbage_trap, alive)  # the default budget allows retries
    try:
        stream = next(streams_owned_by(garbage_trap.id, garbage_trap, alive))
        with pytest.raises(InvalidStatus) as failed:
            async with connect(ws_url(lb, stream)):
                pass
        response = failed.value.response
        assert response.status_code == 502
        assert json.loads(response.body or b"{}")["error"]["code"] == codes.BAD_GATEWAY.code
        assert garbage_trap.handshakes == 1
        assert metric(lb, "yoloserve_lb_retries_total") == 0
        assert metric(lb, "yoloserve_lb_websockets_total", outcome="failed") == 1
        # the same balancer still opens the good backend's streams
        good = next(streams_owned_by(alive.id, garbage_trap, alive))
        async with connect(ws_url(lb, good)) as ws:
            assert ws.response is not None
            await ws.send("hello")
            assert json.loads(await ws.recv())["text"] == "hello"
    finally:
        lb.stop()
