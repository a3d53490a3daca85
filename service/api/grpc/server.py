"""The gRPC server of the service: grpcio's asyncio server, in the process and event loop of the
HTTP app, with ``inference.GRPCInferenceService``, ``grpc.health.v1.Health`` and server reflection.

Started in the app's lifespan when ``--grpc-port`` is set; on shutdown it stops taking calls,
lets streams answer what they took and end, ends health watches (which saw NOT_SERVING as soon
as the drain began), and waits up to the drain timeout for calls in flight before the models
close.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service.api.grpc.health import HealthServicer
from service.api.grpc.proto import grpc_service_pb2, grpc_service_pb2_grpc, pool
from service.api.grpc.servicer import InferenceServicer
from service.runtime.state import AppState

__all__ = ["GrpcServer"]

log = logging.getLogger("yoloserve")
MAX_SEND_BYTES = 256 * 1024 * 1024  # answers: a raw batch's output0 is ~3 MB an image


def _reflected() -> list[str]:
    """The services reflection describes, their files added to the generated modules' pool."""
    for module in (health_pb2, reflection_pb2):
        try:
            pool.POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            pool.POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return [grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]


class GrpcServer:
    def __init__(self, state: AppState, version: str) -> None:
        self.state = state
        self.inference = InferenceServicer(state, version)
        self.health = HealthServicer(state)
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        s = self.state.settings
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", s.max_body_bytes),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.max_metadata_size", s.max_header_bytes),
            ("grpc.so_reuseport", int(s.workers > 1)),  # each worker binds the port
        ])
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.inference, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(_reflected(), server, pool=pool.POOL)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        self.health.start()  # from now on, each change of the lifecycle reaches Watch at once
        await server.start()
        self._server = server
        log.info("gRPC listening", extra={"address": f"{host}:{self.port}"})

    async def stop(self, grace: float) -> None:
        """Stop taking calls; streams answer what they took and end, health watches end; calls
        in flight finish within ``grace`` seconds, then are cancelled."""
        if self._server is None:
            return
        self.inference.closing.set()
        self.health.close()
        await self._server.stop(grace)
        self._server = None
