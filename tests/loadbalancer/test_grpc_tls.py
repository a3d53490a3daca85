"""gRPC over TLS at both ends of the balancer's gRPC port, with a PKI made here (``pki.py``):

- with ``--tls-cert``/``--tls-key`` the gRPC port speaks TLS (ALPN h2), with the proxy port's
  client CA: a ``grpc`` secure channel and ``tritonclient.grpc`` (``ssl=True``) are answered; h2c
  and a client without a certificate are refused before any call reaches a backend; a renewed
  certificate is served to new connections within 5 s, without a restart;
- ``https://`` gRPC backends: verified against ``--upstream-ca``, mutual TLS to the one that
  requires a client certificate, health checks over the same TLS; one signed by another CA is
  unhealthy, logged with the reason, and never answers: alone, its calls fail ``UNAVAILABLE``.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.procs import Fleet, GrpcBackend, free_port, wait_until
from service.api.grpc.proto import grpc_service_pb2 as pb
from service.api.grpc.proto import grpc_service_pb2_grpc
from tests.loadbalancer.harness import LBProc
from tests.loadbalancer.pki import Authority, Issued
from tests.loadbalancer.test_lb_tls import served_serial, trusting

pytestmark = pytest.mark.slow

NAME_OVERRIDE = ("grpc.ssl_target_name_override", "localhost")  # the certificates name localhost


def credentials(ca: Authority, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=client.key.read_bytes() if client is not None else None,
        certificate_chain=client.cert.read_bytes() if client is not None else None)


class TlsGrpcBackend(GrpcBackend):
    """The stand-in gRPC backend over TLS with ``issued``, on ``host`` (and a port of its own,
    or ``port``); with ``client_ca`` it requires a client certificate. Its readiness check
    trusts ``ca``, presents ``client`` and checks the certificate against ``name``."""

    def __init__(self, name: str, issued: Issued, ca: Authority, *, client_ca: Path | None = None,
                 client: Issued | None = None, host: str = "127.0.0.1", port: int | None = None,
                 checked_name: str = "localhost") -> None:
        super().__init__(name)
        self.host = host
        if port is not None:
            self.port = port
            self.cmd[self.cmd.index("--port") + 1] = str(port)
        self.cmd += ["--host", host, "--tls-cert", str(issued.cert), "--tls-key", str(issued.key)]
        if client_ca is not None:
            self.cmd += ["--client-ca", str(client_ca)]
        self.credentials = credentials(ca, client)
        self.checked_name = checked_name
        self.url = f"https://{self.id}"

    @property
    def id(self) -> str:
        return f"{self.host}:{self.port}"

    def ready(self) -> bool:
        self.check_running()
        options = [("grpc.ssl_target_name_override", self.checked_name)]
        with grpc.secure_channel(self.id, self.credentials, options=options) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                   timeout=1.0)
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def grpc_balancer(*args: str) -> tuple[LBProc, int]:
    """A balancer with a gRPC port (and no HTTP backend), probing every 0.2 s; its log is kept."""
    port = free_port()
    lb = LBProc([], "--grpc-port", str(port), "--health-interval", "0.2", "--per-try-timeout", "5",
                *args)
    return lb, port


def grpc_health(lb: LBProc) -> dict[str, str]:
    return {b["id"]: b["health"] for b in lb.status()["grpc"]["backends"]}


def grpc_requests(lb: LBProc) -> int:
    return sum(b["totals"]["requests"] for b in lb.status()["grpc"]["backends"])


def call(channel: grpc.Channel, data: bytes = b"x", timeout: float = 10.0) -> str:
    """One ModelInfer; the name of the backend that answered it."""
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="in", datatype="UINT8", shape=[len(data)])
    request.raw_input_contents.append(data)
    answer = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)
    assert answer.raw_output_contents[0] == data
    return str(answer.model_version)


def alpn_of(port: int, context: ssl.SSLContext) -> str | None:
    """The protocol a TLS client offering h2 and http/1.1 gets on ``port``."""
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.selected_alpn_protocol()


@pytest.fixture
def backend() -> Iterator[GrpcBackend]:
    plain = GrpcBackend("plain")
    with Fleet(plain):
        yield plain


def test_the_grpc_port_speaks_tls_with_client_certificates_and_reloads(
        pki: tuple[Authority, Authority], backend: GrpcBackend) -> None:
    ca, other = pki
    first, client = ca.issue("lb"), ca.issue("client", server=False)
    stranger = other.issue("stranger", server=False)
    lb, port = grpc_balancer("--grpc-backend", backend.id, "--tls-cert", str(first.cert),
                             "--tls-key", str(first.key), "--tls-client-ca", str(ca.cert))
    try:
        lb.start().wait_ready()
        wait_until(lambda: grpc_health(lb) == {backend.id: "healthy"}, 15, "the gRPC backend healthy")
        # a grpc secure channel with a client certificate
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials(ca, client),
                                 options=[NAME_OVERRIDE]) as channel:
            assert {call(channel, b"%d" % i) for i in range(5)} == {"plain"}
            assert call(channel, b"hello" * 50_000) == "plain"  # 250 kB each way, through TLS
        # Triton's client, ssl=True
        triton_client = triton.InferenceServerClient(
            f"127.0.0.1:{port}", ssl=True, root_certificates=str(ca.cert),
            private_key=str(client.key), certificate_chain=str(client.cert),
            channel_args=[NAME_OVERRIDE])
        try:
            data = np.frombuffer(b"triton over tls", dtype=np.uint8)
            given = triton.InferInput("in", [data.size], "UINT8")
            given.set_data_from_numpy(data)
            result = triton_client.infer("m", [given])
            assert result.get_response().model_version == "plain"
            assert result.as_numpy("echo").tobytes() == data.tobytes()
        finally:
            triton_client.close()
        assert alpn_of(port, trusting(ca, client)) == "h2"

        # refused before any call reaches a backend: h2c, no client certificate, another CA's
        answered = grpc_requests(lb)
        refused = [grpc.insecure_channel(f"127.0.0.1:{port}"),
                   grpc.secure_channel(f"127.0.0.1:{port}", credentials(ca), options=[NAME_OVERRIDE]),
                   grpc.secure_channel(f"127.0.0.1:{port}", credentials(ca, stranger),
                                       options=[NAME_OVERRIDE])]
        for channel in refused:
            with channel, pytest.raises(grpc.RpcError) as caught:
                call(channel, timeout=5.0)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value
        assert grpc_requests(lb) == answered

        # a renewed certificate: new connections get it within 5 s, without a restart
        trust = trusting(ca, client)
        assert served_serial(port, trust) == first.serial
        renewed = ca.issue("lb")
        written = time.monotonic()
        wait_until(lambda: served_serial(port, trust) == renewed.serial, 5.0,
                   "the renewed certificate on the gRPC port")
        print(f"renewed certificate served {time.monotonic() - written:.2f}s after it was written")
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials(ca, client),
                                 options=[NAME_OVERRIDE]) as channel:
            assert call(channel) == "plain"
        assert served_serial(lb.port, trust) == renewed.serial  # the proxy port's, the same files
        assert "TLS files reloaded" in lb.logs() and lb.running()
    finally:
        lb.stop()


def test_grpc_backends_over_tls_verified_mutual_and_another_ca_refused(
        pki: tuple[Authority, Authority]) -> None:
    ca, other = pki
    client = ca.issue("lb-client", server=False)
    one = TlsGrpcBackend("one", ca.issue("one"), ca)
    mutual = TlsGrpcBackend("mutual", ca.issue("mutual"), ca, client_ca=ca.cert, client=client)
    stranger = TlsGrpcBackend("stranger", other.issue("stranger"), other)
    upstream = ("--upstream-ca", str(ca.cert), "--upstream-cert", str(client.cert),
                "--upstream-key", str(client.key))
    with Fleet(one, mutual, stranger):
        lb, port = grpc_balancer(*(f for b in (one, mutual, stranger) for f in ("--grpc-backend", b.url)),
                                 *upstream)
        alone, alone_port = grpc_balancer("--grpc-backend", stranger.url, "--max-retries", "1",
                                          *upstream)
        try:
            lb.start()
            alone.start()
            lb.wait_ready()
            wanted = {one.id: "healthy", mutual.id: "healthy", stranger.id: "unhealthy"}
            wait_until(lambda: grpc_health(lb) == wanted, 15,
                       "the backends of our CA healthy (health checks over TLS), the other not")
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                seen = Counter(call(channel, b"%d" % i) for i in range(30))
                assert call(channel, b"hello" * 50_000) in ("one", "mutual")
            assert set(seen) == {"one", "mutual"}, seen  # both used, the stranger never
            logs = lb.logs()
            assert "TLS to a gRPC backend failed" in logs and "certificate verify failed" in logs

            # the stranger alone: every call fails UNAVAILABLE, none answered by it
            alone.wait_ready()
            with grpc.insecure_channel(f"127.0.0.1:{alone_port}") as channel:
                for _ in range(3):
                    with pytest.raises(grpc.RpcError) as caught:
                        call(channel, timeout=5.0)
                    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value
                    trailers = dict(caught.value.trailing_metadata() or ())
                    assert trailers.get("yoloserve-error-code") in ("no_healthy_backend", "bad_gateway")
            assert "certificate verify failed" in alone.logs()
        finally:
            lb.stop()
            alone.stop()
