"""The Python cost of one HTTP request through the balancer, without sockets: the balancer's own
protocols (:class:`~loadbalancer.downstream.ClientConnection` and
:class:`~loadbalancer.upstream.UpstreamConnection`) on fake transports, with the request and the
answer of ``python -m bench lb``: wrk's 2 KB POST, and the stand-in backend's JSON answer with
the headers uvicorn writes.

Each round, every client connection (``--connections``) sends one request; then every backend
connection written to gets its answer. The figure is this thread's CPU time per request: the
balancer's Python (parsing, choosing, forwarding, accounting), without the kernel's socket work,
which costs the balancer about as much as it costs nginx. With ``--profile`` it also prints
cProfile's top functions.

    python -m bench lb_micro [--requests 40000] [--connections 64] [--repeats 5] [--profile]

To measure another checkout's balancer (an older commit), run this file from there with that
checkout first on the path: ``cd OTHER && PYTHONPATH=OTHER python THIS/bench/lb_micro.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

BODY = b"x" * 2048
REQUEST = (b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 2048\r\n"
           b"Content-Type: application/octet-stream\r\n\r\n" + BODY)
ANSWER_BODY = (b'{"backend": "b0", "headers": {"x-request-id": "lb-0123456789abcdef-000001", '
               b'"x-request-timeout-ms": "29999", "x-forwarded-for": "127.0.0.1", "host": '
               b'"127.0.0.1:8080", "content-length": "2048"}, "body_bytes": 2048, "body_sha256": '
               b'"' + b"0" * 64 + b'", "path": "/v1/detect", "query": ""}')
ANSWER = (b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 14:00:00 GMT\r\nserver: uvicorn\r\n"
          b"content-type: application/json\r\ncontent-length: %d\r\n"
          b"x-request-id: lb-0123456789abcdef-000001\r\n\r\n" % len(ANSWER_BODY)) + ANSWER_BODY


class FakeTransport:
    """Counts what a protocol writes; ``sent`` says whether anything was written since the last
    look."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0
        self.sent = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)
        self.sent = True

    def is_closing(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the balancer closed a connection")

    abort = close

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class Stand:
    """The balancer's protocols between ``connections`` clients and two backends' connections."""

    def __init__(self, connections: int) -> None:
        from loadbalancer.downstream import ClientConnection
        from loadbalancer.proxy import Proxy
        from loadbalancer.server import LoadBalancer, _Pools
        from loadbalancer.settings import LBSettings
        from loadbalancer.upstream import UpstreamConnection

        # connections at the bottom of a pool's stack may idle through a long run
        settings = LBSettings(backends=["http://127.0.0.1:1", "http://127.0.0.1:2"],
                              upstream_idle_timeout=3600.0, access_log=False)  # type: ignore[call-arg]
        lb = LoadBalancer(settings)
        lb.cluster.watchers.append(_Pools(settings, lb.upstream_tls))
        for spec in settings.backends:
            lb.cluster.add(spec, time.monotonic(), warm=True)
        self.proxy = Proxy(settings, lb.cluster, lb.stats)
        self.upstreams: list[tuple[UpstreamConnection, FakeTransport]] = []
        for backend in lb.cluster.backends.values():
            pool = backend.pool
            assert pool is not None
            for _ in range(connections):
                conn = UpstreamConnection(pool)
                transport = FakeTransport()
                conn.connection_made(transport)  # type: ignore[arg-type]
                pool.size += 1
                pool.release(conn, reuse=True)
                self.upstreams.append((conn, transport))
        self.clients: list[tuple[ClientConnection, FakeTransport]] = []
        for _ in range(connections):
            client = ClientConnection(self.proxy, set())
            transport = FakeTransport()
            client.connection_made(transport)  # type: ignore[arg-type]
            self.clients.append((client, transport))

    def round(self) -> None:
        """One request on every client connection, then every answer."""
        for client, _ in self.clients:
            client.data_received(REQUEST)
        for conn, transport in self.upstreams:
            if transport.sent:
                transport.sent = False
                conn.data_received(ANSWER)

    @property
    def answered(self) -> int:
        """Writes to the clients: one per answer, when a small answer leaves in one write."""
        return sum(t.writes for _, t in self.clients)

    @property
    def forwarded(self) -> int:
        """Writes to the backends: one per request, head and body together."""
        return sum(t.writes for _, t in self.upstreams)


async def run(requests: int, connections: int, repeats: int, profile: bool = False) -> dict[str, Any]:
    """The balancer's µs per request: the median and the best of ``repeats`` runs of
    ``requests`` requests each."""
    import cProfile
    import pstats

    stand = Stand(connections)
    rounds = max(1, requests // connections)
    for _ in range(max(1, rounds // 10)):
        stand.round()  # warm-up
    times = []
    profiler = cProfile.Profile() if profile else None
    answered_before, forwarded_before = stand.answered, stand.forwarded
    for _ in range(repeats):
        answered = stand.answered
        begin = time.thread_time()
        if profiler is not None:
            profiler.enable()
        for _ in range(rounds):
            stand.round()
        if profiler is not None:
            profiler.disable()
        spent = time.thread_time() - begin
        done = stand.answered - answered
        assert done == rounds * connections, f"{done} answers for {rounds * connections} requests"
        times.append(spent / done * 1e6)
        await asyncio.sleep(0)  # the ticker's turn
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    total = rounds * connections * repeats
    return {"requests": rounds * connections, "repeats": repeats,
            "us_per_request_median": statistics.median(times), "us_per_request_best": min(times),
            "client_writes_per_request": (stand.answered - answered_before) / total,
            "backend_writes_per_request": (stand.forwarded - forwarded_before) / total,
            "statuses": dict(stand.proxy.stats.responses)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench lb_micro",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=40000, help="per repeat")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    args = parser.parse_args(argv)
    try:
        import uvloop
        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.requests, args.connections, args.repeats, args.profile))
    print(f"{result['requests']} requests x {result['repeats']} repeats on {args.connections} "
          f"connections: balancer {result['us_per_request_median']:.2f} us/request (median; best "
          f"{result['us_per_request_best']:.2f}); writes per request: "
          f"{result['client_writes_per_request']:.2f} to the client, "
          f"{result['backend_writes_per_request']:.2f} to the backend")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
