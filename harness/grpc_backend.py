"""A stand-in gRPC backend for the balancer's tests and benchmarks: grpcio's asyncio server with
``inference.GRPCInferenceService/ModelInfer`` (answers at once, or after ``--delay-ms``: an
answer whose ``model_version`` is the backend's name and whose one output echoes the request's
raw input) and ``grpc.health.v1``. SIGTERM drains as the service does: health NOT_SERVING, new
calls ``UNAVAILABLE``, calls in flight finish, then it exits. With ``--tls-cert`` and
``--tls-key`` it speaks gRPC over TLS (ALPN h2), and with ``--client-ca`` it requires a client
certificate signed by that CA.

    python -m harness.grpc_backend --port PORT --name NAME [--delay-ms MS] [--host 127.0.0.1]
        [--tls-cert FILE --tls-key FILE [--client-ca FILE]]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.api.grpc.proto import grpc_service_pb2 as pb
from service.api.grpc.proto import grpc_service_pb2_grpc

__all__ = ["main"]


class _Inference:
    def __init__(self, name: str, delay_s: float) -> None:
        self.name, self.delay_s = name, delay_s
        self.draining = False

    def __getattr__(self, name: str) -> Any:
        """The protocol's other calls: UNIMPLEMENTED."""
        if not name[:1].isupper():
            raise AttributeError(name)

        async def unimplemented(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, name)

        return unimplemented

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # the stand-in's work
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=self.name,
                                         id=request.id)
        response.outputs.add(name="echo", datatype="UINT8",
                             shape=[sum(len(r) for r in request.raw_input_contents)])
        response.raw_output_contents.extend(request.raw_input_contents)
        return response


def _credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca is not None else None,
        require_client_auth=client_ca is not None)


async def _serve(port: int, name: str, delay_ms: float,
                 credentials: grpc.ServerCredentials | None = None, host: str = "127.0.0.1") -> None:
    server = grpc.aio.server()
    inference = _Inference(name, delay_ms / 1000)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)  # type: ignore[no-untyped-call]
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    if credentials is None:
        server.add_insecure_port(f"{host}:{port}")
    else:
        server.add_secure_port(f"{host}:{port}", credentials)
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    # drain: no new calls (health, UNAVAILABLE), those in flight finish
    inference.draining = True
    await checks.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--client-ca", type=Path)
    args = parser.parse_args()
    credentials = None
    if args.tls_cert is not None and args.tls_key is not None:
        credentials = _credentials(args.tls_cert, args.tls_key, args.client_ca)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_serve(args.port, args.name, args.delay_ms, credentials, args.host))


if __name__ == "__main__":
    main()
