"""A stand-in backend: many "hosts" in one process, each answering like the service after a fixed
service time with a fixed concurrency, at almost no CPU cost, so that 32 of them fit on a small
machine (``bench/scalesim.py`` puts the balancer in front of them).

    python -m bench.standin --ports 41001 41002 41003 --service-ms 20 --concurrency 1

Every port is one host, all on 127.0.0.1, served by one event loop (uvloop when installed) through
a raw ``asyncio.Protocol`` that parses HTTP/1.1 with httptools: no task, future or framework per
request, only a timer. Routes, on every port:

* ``POST /v1/detect``: the body is read and thrown away; once the host has a free slot (at most
  ``concurrency`` requests in service at once, the others wait in arrival order: a semaphore per
  host) the request is held ``service-ms``, then answered 200 with a small JSON body shaped like a
  ``DetectionResult`` (``detections`` with one box). A timer never ends a service early: if it
  fires before the service time has passed (by ``time.perf_counter``) it is set again for the
  rest, so a host never serves faster than its nominal capacity. The answer carries
  ``X-Standin-Host`` (the host's index) and ``X-Standin-Us``: microseconds from the request's
  last byte to its answer, waiting for a slot included, so that a client can tell time spent at
  the host from time spent on the way; and ``X-Standin-Arrived-Ns``, ``time.perf_counter()`` (the
  system's monotonic clock on Linux, the same in every process) in ns when the request's last
  byte was parsed, so that a client on the same machine can split the way there from the way
  back.
* ``GET /health/ready`` (``{"status": "ready", ...}``) and ``GET /health/live``: 200 at once.
* ``GET /standin/stats``: every host's counters (requests served, total seconds in service, total
  seconds held, longest queue, connections accepted) since the start, as JSON; readers take
  differences.

Answers go out in request order on each connection (HTTP/1.1 pipelining is honoured). SIGTERM
or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
from collections import deque
from functools import partial
from time import perf_counter
from typing import Any, cast

import httptools

__all__ = ["DETECTION", "Host", "main", "serve"]

DETECTION: dict[str, Any] = {
    "image_name": "standin.jpg",
    "image_dimensions": {"width": 640, "height": 480},
    "detections": [{
        "class_name": "circle", "class_id": 0, "confidence": 0.91,
        "box_2d": {"x_min": 12.0, "y_min": 40.5, "x_max": 100.2, "y_max": 130.0},
        "normalized_box": {"x_center": 0.088, "y_center": 0.177, "width": 0.138, "height": 0.186},
        "box_area": 7893.9,
    }],
    "detection_count": 1,
    "processing_metadata": {
        "model_version": "standin", "confidence_threshold": 0.25, "iou_threshold": 0.7,
        "batch_size": 1, "timestamp": "2026-12-02T00:00:00Z",
        "timings_ms": {"queue": 0.0, "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0,
                       "total": 0.0},
        "cached": False,
    },
}
_READY = json.dumps({"status": "ready", "queue_depth": 0, "inflight_batches": 0}).encode()
_LIVE = json.dumps({"status": "live"}).encode()
_NOT_FOUND = json.dumps({"detail": "not found"}).encode()


def _answer(status: bytes, body: bytes, keep_alive: bool, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + extra
            + (b"" if keep_alive else b"connection: close\r\n") + b"\r\n" + body)


class _Job:
    """One detect request: who to answer, and when it arrived and entered service."""

    __slots__ = ("arrived", "conn", "keep_alive", "slot", "started")

    def __init__(self, conn: _Connection, slot: list[bytes | None], keep_alive: bool,
                 arrived: float) -> None:
        self.conn, self.slot, self.keep_alive, self.arrived = conn, slot, keep_alive, arrived
        self.started = 0.0


class Host:
    """One stand-in host: ``concurrency`` requests in service at once, the rest wait in order."""

    def __init__(self, index: int, port: int, service_s: float, concurrency: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.index, self.port = index, port
        self.service_s, self.concurrency = service_s, concurrency
        self.loop = loop
        self.busy = 0
        self.waiting: deque[_Job] = deque()
        self.served = 0
        self.service_total = 0.0  # seconds from entering service to the answer, summed
        self.hold_total = 0.0  # seconds from arrival to the answer (waiting included), summed
        self.max_waiting = 0
        self.accepted = 0  # connections accepted
        body = json.dumps(DETECTION).encode()
        self._body = body
        self._head_ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + \
            str(len(body)).encode() + b"\r\nx-standin-host: " + str(index).encode() + b"\r\n"

    def submit(self, job: _Job) -> None:
        if self.busy < self.concurrency:
            self._start(job)
        else:
            self.waiting.append(job)
            if len(self.waiting) > self.max_waiting:
                self.max_waiting = len(self.waiting)

    def _start(self, job: _Job) -> None:
        self.busy += 1
        job.started = perf_counter()
        self.loop.call_later(self.service_s, self._finish, job)

    def _finish(self, job: _Job) -> None:
        now = perf_counter()
        left = job.started + self.service_s - now
        if left > 0:  # the loop's timer came early (uvloop keeps time in whole ms): never serve faster
            self.loop.call_later(left, self._finish, job)
            return
        self.busy -= 1
        self.served += 1
        self.service_total += now - job.started
        self.hold_total += now - job.arrived
        held_us = str(int((now - job.arrived) * 1e6)).encode()
        arrived_ns = str(int(job.arrived * 1e9)).encode()
        job.conn.deliver(job.slot, self._head_ok + b"x-standin-us: " + held_us
                         + b"\r\nx-standin-arrived-ns: " + arrived_ns + b"\r\n"
                         + (b"" if job.keep_alive else b"connection: close\r\n") + b"\r\n"
                         + self._body, job.keep_alive)
        if self.waiting:
            self._start(self.waiting.popleft())

    def stats(self) -> dict[str, Any]:
        return {"index": self.index, "port": self.port, "served": self.served,
                "service_total_s": self.service_total, "hold_total_s": self.hold_total,
                "max_waiting": self.max_waiting, "busy": self.busy, "waiting": len(self.waiting),
                "accepted": self.accepted}


class _Connection(asyncio.Protocol):
    """One client connection to one host; answers leave in request order."""

    def __init__(self, host: Host, hosts: list[Host]) -> None:
        self.host, self.hosts = host, hosts
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.pending: deque[list[bytes | None]] = deque()  # one slot per request, in order
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.host.accepted += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_answer(b"400 Bad Request", b"{}", False))
                self.transport.close()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        now = perf_counter()
        method, path = self.parser.get_method(), self.url.split(b"?", 1)[0]
        keep_alive = self.parser.should_keep_alive()
        slot: list[bytes | None] = [None]
        self.pending.append(slot)
        if method == b"POST" and path == b"/v1/detect":
            self.host.submit(_Job(self, slot, keep_alive, now))
        elif method == b"GET" and path == b"/health/ready":
            self.deliver(slot, _answer(b"200 OK", _READY, keep_alive), keep_alive)
        elif method == b"GET" and path == b"/health/live":
            self.deliver(slot, _answer(b"200 OK", _LIVE, keep_alive), keep_alive)
        elif method == b"GET" and path == b"/standin/stats":
            body = json.dumps({"hosts": [h.stats() for h in self.hosts]}).encode()
            self.deliver(slot, _answer(b"200 OK", body, keep_alive), keep_alive)
        else:
            self.deliver(slot, _answer(b"404 Not Found", _NOT_FOUND, keep_alive), keep_alive)

    # -- answers -------------------------------------------------------------------------------
    def deliver(self, slot: list[bytes | None], data: bytes, keep_alive: bool) -> None:
        """Fill this request's slot and send every answer that is now first in line."""
        slot[0] = data
        if not keep_alive:
            self.close_after = True
        transport = self.transport
        while self.pending and self.pending[0][0] is not None:
            ready = self.pending.popleft()[0]
            if ready is not None and transport is not None and not transport.is_closing():
                transport.write(ready)
        if self.close_after and not self.pending and transport is not None:
            transport.close()


async def serve(ports: list[int], service_ms: float, concurrency: int,
                host: str = "127.0.0.1") -> None:
    """Serve one stand-in host on each of ``ports`` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hosts = [Host(i, port, service_ms / 1000.0, concurrency, loop) for i, port in enumerate(ports)]
    servers = []
    for h in hosts:  # every port is bound before any answers: the first one ready means all are
        servers.append(await loop.create_server(partial(_Connection, h, hosts), host, h.port,
                                                backlog=1024, reuse_address=True, start_serving=False))
    for server in servers:
        await server.start_serving()
    print(f"standin: {len(hosts)} host(s) on {host}:{ports[0]}..{ports[-1]}, "
          f"{service_ms} ms, concurrency {concurrency}", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.standin",
                                 description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--ports", type=int, nargs="+", required=True, help="one host per port")
    ap.add_argument("--service-ms", type=float, default=20.0, help="time each request is held")
    ap.add_argument("--concurrency", type=int, default=1, help="requests in service at once, per host")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = ap.parse_args(argv)
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.ports, args.service_ms, args.concurrency, args.host))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
