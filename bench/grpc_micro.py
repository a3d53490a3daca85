"""The Python cost of one gRPC call through the balancer, without sockets: the balancer's own
protocols (:class:`~loadbalancer.grpc_front.GrpcDownstream` and
:class:`~loadbalancer.grpc_upstream.GrpcConnection`) on fake transports, between an ``h2``
client that sends unary calls the way grpcio does (HEADERS, then one DATA with END_STREAM) and
``h2`` servers that answer each at once (HEADERS, one DATA, trailers) as the stand-in backends
do, with the same 2 KB message each way as ``python -m bench grpc``.

Calls go in batches of ``--batch`` (the calls in flight whose frames arrive in one read). The
figure is this thread's CPU time per call (other processes on the cores do not count) less the
peers' (the client's and the backends' ``h2``, measured apart): the balancer's Python, without
the kernel's socket work. With ``--profile`` it also prints cProfile's top functions of the
balancer's side alone.

    python -m bench grpc_micro [--calls 20000] [--batch 16] [--profile]

To measure another checkout's balancer (an older commit), run this file from there with that
checkout first on the path: ``cd OTHER && PYTHONPATH=OTHER python THIS/bench/grpc_micro.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

PATH = b"/inference.GRPCInferenceService/ModelInfer"
MESSAGE = b"\x00" + (2070).to_bytes(4, "big") + b"m" * 2070  # a framed 2 KB ModelInfer request
REQUEST_HEADERS = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH),
    (b":authority", b"127.0.0.1:8001"), (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-python-asyncio/1.85.4 grpc-c/51.0.0 (linux; chttp2)"),
    (b"grpc-accept-encoding", b"identity, deflate, gzip"), (b"grpc-timeout", b"9999868u")]
RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                    (b"grpc-accept-encoding", b"identity, deflate, gzip")]
TRAILERS = [(b"grpc-status", b"0")]


class FakeTransport:
    """What a protocol writes, kept until the peer takes it."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.writes = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.out.append(bytes(data))

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Peers:
    """The client and the backends, and the time spent in them."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.client.initiate_connection()
        self.backends: list[h2.connection.H2Connection] = []
        self.answered = self.served = 0
        self.received = 0  # bytes of answers
        self.last_headers: list[tuple[bytes, bytes]] = []

    def backend(self) -> h2.connection.H2Connection:
        server = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        server.initiate_connection()
        self.backends.append(server)
        return server

    def requests(self, count: int, headers: list[tuple[bytes, bytes]] = REQUEST_HEADERS) -> bytes:
        begin = time.thread_time()
        for _ in range(count):
            stream_id = self.client.get_next_available_stream_id()
            self.client.send_headers(stream_id, headers)
            self.client.send_data(stream_id, MESSAGE, end_stream=True)
        data = self.client.data_to_send()
        self.spent += time.thread_time() - begin
        return data

    def serve(self, server: h2.connection.H2Connection, data: bytes) -> bytes:
        begin = time.thread_time()
        for event in server.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if isinstance(event, h2.events.StreamEnded):
                self.served += 1
                server.send_headers(event.stream_id, RESPONSE_HEADERS)
                server.send_data(event.stream_id, MESSAGE)
                server.send_headers(event.stream_id, TRAILERS, end_stream=True)
        out = server.data_to_send()
        self.spent += time.thread_time() - begin
        return out

    def receive(self, data: bytes) -> bytes:
        begin = time.thread_time()
        for event in self.client.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.received += len(event.data)
                self.client.acknowledge_received_data(event.flow_controlled_length,
                                                      event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                self.last_headers = event.headers
            elif isinstance(event, h2.events.StreamEnded):
                self.answered += 1
        out = self.client.data_to_send()
        self.spent += time.thread_time() - begin
        return out


class Stand:
    """The balancer's protocols on fake transports between the peers: ``exchange`` feeds it the
    client's bytes and carries every side's answers on until all is quiet."""

    def __init__(self, peers: Peers, down: Any, down_transport: FakeTransport,
                 upstreams: list[tuple[Any, FakeTransport, h2.connection.H2Connection]]) -> None:
        self.peers, self.down, self.down_transport = peers, down, down_transport
        self.upstreams = upstreams
        self.profiler: Any = None  # a cProfile.Profile that times the balancer's side alone

    def _on(self) -> None:
        if self.profiler is not None:
            self.profiler.enable()

    def _off(self) -> None:
        if self.profiler is not None:
            self.profiler.disable()

    @classmethod
    async def open(cls, peers: Peers) -> Stand:
        """Two backends, one client connection, the prefaces and settings exchanged."""
        from loadbalancer.grpc_front import GrpcDownstream, GrpcFront, _Pools
        from loadbalancer.grpc_upstream import GrpcConnection
        from loadbalancer.proxy import Proxy
        from loadbalancer.settings import LBSettings

        settings = LBSettings(grpc_port=0, grpc_backends=["127.0.0.1:1", "127.0.0.1:2"],
                              access_log=False)  # type: ignore[call-arg]
        front = GrpcFront(settings, upstream_tls=None)  # type: ignore[arg-type]
        front.cluster.watchers.append(_Pools(settings, front.pools, None))  # type: ignore[arg-type]
        for spec in settings.grpc_backends:
            front.cluster.add(spec, time.monotonic(), warm=True)
        front.proxy = Proxy(settings, front.cluster, front.stats)
        upstreams = []
        for pool in front.pools.values():
            conn = GrpcConnection(pool)
            transport = FakeTransport()
            conn.connection_made(transport)  # type: ignore[arg-type]
            pool.connections.append(conn)
            upstreams.append((conn, transport, peers.backend()))
        down = GrpcDownstream(front)
        down_transport = FakeTransport()
        down.connection_made(down_transport)  # type: ignore[arg-type]
        stand = cls(peers, down, down_transport, upstreams)
        await stand.exchange(peers.client.data_to_send())
        return stand

    @property
    def writes(self) -> int:
        return sum(t.writes for _, t, _ in self.upstreams) + self.down_transport.writes

    async def exchange(self, data: bytes) -> None:
        self._on()
        self.down.data_received(data)
        await _settle()  # the balancer's writes of this turn, and nothing else
        self._off()
        moving = True
        while moving:
            moving = False
            for conn, transport, server in self.upstreams:
                sent = transport.take()
                if sent:
                    moving = True
                    answer = self.peers.serve(server, sent)
                    if answer:
                        self._on()
                        conn.data_received(answer)
                        self._off()
            self._on()
            await _settle()
            self._off()
            back = self.down_transport.take()
            if back:
                moving = True
                more = self.peers.receive(back)
                if more:
                    self._on()
                    self.down.data_received(more)
                    self._off()
            self._on()
            await _settle()
            self._off()


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def run(calls: int, batch: int, profile: bool = False) -> dict[str, float]:
    """Balancer µs per call (the peers' time left out), the peers' and transport writes per
    call, over ``calls`` calls in batches of ``batch``."""
    import cProfile
    import pstats

    peers = Peers()
    stand = await Stand.open(peers)
    await stand.exchange(peers.requests(batch))  # warm-up: connections' tables and windows
    peers.spent, peers.answered, peers.received = 0.0, 0, 0
    writes = stand.writes
    profiler = stand.profiler = cProfile.Profile() if profile else None
    begin = time.thread_time()
    for _ in range(calls // batch):
        await stand.exchange(peers.requests(batch))
    total = time.thread_time() - begin
    done = peers.answered
    assert peers.received == done * len(MESSAGE), "an answer came back incomplete"
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return {"calls": done, "us_per_call": (total - peers.spent) / max(done, 1) * 1e6,
            "peers_us_per_call": peers.spent / max(done, 1) * 1e6,
            "writes_per_call": (stand.writes - writes) / max(done, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench grpc_micro",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=16, help="calls whose frames come in one read")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    args = parser.parse_args(argv)
    try:
        import uvloop
        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.calls, args.batch, args.profile))
    print(f"{result['calls']} calls in batches of {args.batch}: balancer "
          f"{result['us_per_call']:.1f} us/call (peers {result['peers_us_per_call']:.1f} us/call "
          f"apart), {result['writes_per_call']:.2f} transport writes/call")
    return 0 if result["calls"] == args.calls // args.batch * args.batch else 1


if __name__ == "__main__":
    raise SystemExit(main())
