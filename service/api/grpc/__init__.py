"""The Open Inference Protocol v2 over gRPC (KServe v2 / Triton's ``inference.GRPCInferenceService``),
with gRPC health checking and reflection: a front beside ``/v1`` and ``/v2``, on its own port."""

from service.api.grpc.server import GrpcServer

__all__ = ["GrpcServer"]
