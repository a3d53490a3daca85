"""The balancer's gRPC side against stand-in gRPC backends (real processes on loopback): each
call of one channel routed on its own, retries when a backend is SIGKILLed or drains, health
from ``grpc.health.v1``, and the errors it answers itself."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator

import grpc
import httpx
import pytest

from harness.procs import Balancer, Fleet, GrpcBackend, free_port, wait_until
from service.api.grpc.proto import grpc_service_pb2 as pb
from service.api.grpc.proto import grpc_service_pb2_grpc

pytestmark = pytest.mark.slow


def _balancer(backends: list[GrpcBackend], *args: str) -> Balancer:
    port = free_port()
    flags = [flag for b in backends for flag in ("--grpc-backend", b.id)]
    lb = Balancer("lb-grpc", (), "--grpc-port", str(port), *flags, "--health-interval", "0.2",
                  "--per-try-timeout", "5", *args)
    lb.grpc_port = port  # type: ignore[attr-defined]
    return lb


def _healthy(lb: Balancer, count: int) -> bool:
    status = lb.status()
    return sum(b["health"] == "healthy" for b in status["grpc"]["backends"]) == count


def _call(stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub, data: bytes = b"x",
          timeout: float = 10.0) -> tuple[str, bytes]:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="in", datatype="UINT8", shape=[len(data)])
    request.raw_input_contents.append(data)
    answer = stub.ModelInfer(request, timeout=timeout)
    return answer.model_version, answer.raw_output_contents[0]


@pytest.fixture
def pair() -> Iterator[tuple[GrpcBackend, GrpcBackend, Balancer]]:
    a, b = GrpcBackend("a", delay_ms=20), GrpcBackend("b", delay_ms=20)
    with Fleet(a, b):
        lb = _balancer([a, b])
        with Fleet(lb):
            wait_until(lambda: _healthy(lb, 2), 15, "both gRPC backends healthy")
            yield a, b, lb


def test_calls_of_one_channel_spread_over_both_backends(
        pair: tuple[GrpcBackend, GrpcBackend, Balancer]) -> None:
    _, _, lb = pair
    with grpc.insecure_channel(f"127.0.0.1:{lb.grpc_port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        seen = Counter(_call(stub, b"%d" % i)[0] for i in range(20))
        echoed = _call(stub, b"hello" * 50_000)[1]  # 250 kB each way, through the windows
    assert set(seen) == {"a", "b"} and min(seen.values()) >= 3, seen
    assert echoed == b"hello" * 50_000
    assert {b["id"] for b in lb.status()["grpc"]["backends"]} == {pair[0].id, pair[1].id}
    metrics = httpx.get(lb.admin_url + "/metrics", timeout=5).text
    assert f'yoloserve_lb_grpc_upstream_requests_total{{backend="{pair[0].id}"}}' in metrics


def test_a_large_frame_in_the_same_read_as_the_settings_ack_is_taken(
        pair: tuple[GrpcBackend, GrpcBackend, Balancer]) -> None:
    """A client that acknowledges the balancer's settings and sends a call's data in one write,
    in the largest frames those settings allow: the call is answered, not met with GOAWAY
    FRAME_SIZE_ERROR (h2 checks a read's frames against the limit it had when the read began)."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    _, _, lb = pair
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="in", datatype="UINT8", shape=[40_000])
    request.raw_input_contents.append(b"x" * 40_000)
    body = request.SerializeToString()
    message = b"\0" + len(body).to_bytes(4, "big") + body
    events: list[object] = []
    with socket.create_connection(("127.0.0.1", lb.grpc_port), timeout=10) as sock:
        sock.sendall(client.data_to_send())
        while not any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events):
            events += client.receive_data(sock.recv(65536))
        # the acknowledgement, the headers and the data, in one write
        client.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path",
                            "/inference.GRPCInferenceService/ModelInfer"),
                            (":authority", "lb"), ("content-type", "application/grpc"),
                            ("te", "trailers")])
        size = client.max_outbound_frame_size  # the largest the balancer's settings allow
        for at in range(0, len(message), size):
            client.send_data(1, message[at:at + size], end_stream=at + size >= len(message))
        sock.sendall(client.data_to_send())
        ended = False
        while not ended:
            chunk = sock.recv(65536)
            assert chunk, "the balancer closed the connection"
            for event in client.receive_data(chunk):
                assert not isinstance(event, h2.events.ConnectionTerminated), event
                ended |= isinstance(event, h2.events.StreamEnded)
            sock.sendall(client.data_to_send())


def test_a_backend_sigkilled_while_four_callers_loop_loses_no_call(
        pair: tuple[GrpcBackend, GrpcBackend, Balancer]) -> None:
    a, _, lb = pair
    errors: list[BaseException] = []
    done = Counter[str]()
    stop = threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{lb.grpc_port}") as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    done[_call(stub)[0]] += 1
                except grpc.RpcError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: done["a"] >= 5 and done["b"] >= 5, 20, "calls on both backends")
    a.kill(signal.SIGKILL)
    before = done["b"]
    wait_until(lambda: done["b"] >= before + 40, 30, "calls after the kill")
    stop.set()
    for t in threads:
        t.join(10)
    assert errors == []


def test_a_draining_backend_finishes_its_calls_and_gets_no_new_ones() -> None:
    slow, other = GrpcBackend("slow", delay_ms=1500), GrpcBackend("other")
    with Fleet(slow, other):
        lb = _balancer([slow, other])
        with Fleet(lb):
            wait_until(lambda: _healthy(lb, 2), 15, "both gRPC backends healthy")
            results: list[str] = []
            with grpc.insecure_channel(f"127.0.0.1:{lb.grpc_port}") as channel:
                stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
                futures = [stub.ModelInfer.future(_request(), timeout=10) for _ in range(6)]
                wait_until(lambda: lb.status()["grpc"]["backends"][0]["inflight"] > 0, 10,
                           "a call in flight on the slow backend")
                slow.signal(signal.SIGTERM)  # drains: its calls finish, new ones go elsewhere
                results = [f.result().model_version for f in futures]
                after = [_call(stub)[0] for _ in range(5)]
            assert "slow" in results and len(results) == 6
            assert set(after) == {"other"}


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="in", datatype="UINT8", shape=[1])
    request.raw_input_contents.append(b"x")
    return request


def test_no_backend_is_unavailable_with_the_tables_code() -> None:
    dead = free_port()
    port = free_port()
    lb = Balancer("lb-grpc-none", (), "--grpc-port", str(port), "--grpc-backend",
                  f"127.0.0.1:{dead}", "--max-retries", "1")
    with Fleet(lb), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            _call(stub, timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    trailers = dict(caught.value.trailing_metadata() or ())
    assert trailers.get("yoloserve-error-code") in ("no_healthy_backend", "bad_gateway")
