"""yoloserve's Python client: an async client that retries the right way, its sync twin, a CLI.

::

    from clients import AsyncDetectionClient

    async with AsyncDetectionClient("http://127.0.0.1:8080") as client:
        await client.wait_until_ready(timeout=60)
        result = await client.detect("photo.jpg", conf=0.3)

Over gRPC (the Open Inference Protocol on the service's ``--grpc-port``), the same calls and errors
(``GrpcDetectionClient`` is its synchronous twin; ``annotate`` and ``track``, not in the protocol,
go to ``http_url``)::

    async with AsyncGrpcDetectionClient("grpc://127.0.0.1:8001", model="demo",
                                        http_url="http://127.0.0.1:8000") as client:
        result = await client.detect("photo.jpg", conf=0.3)

Imports nothing heavy: numpy and Pillow are loaded only when a numpy array is passed; grpcio and
protobuf (``pip install 'yoloserve[grpc]'``) only when a gRPC client is made.
"""

from clients._client import AsyncDetectionClient, ClientOptions, DetectOptions
from clients._grpc import AsyncGrpcDetectionClient, GrpcClientOptions
from clients._images import ImageInput
from clients._many import ItemError, ItemResult, Progress
from clients._retry import Backoff, RetryBudget, parse_retry_after
from clients._sync import DetectionClient, GrpcDetectionClient
from clients._track import FrameSource, LostFrame
from clients.errors import (
    ClientError,
    ConnectError,
    DeadlineExceeded,
    HttpRequired,
    InvalidRequest,
    Overloaded,
    ProtocolError,
    RateLimited,
    ServerError,
    Unauthorized,
)

__all__ = [
    "AsyncDetectionClient",
    "AsyncGrpcDetectionClient",
    "Backoff",
    "ClientError",
    "ClientOptions",
    "ConnectError",
    "DeadlineExceeded",
    "DetectOptions",
    "DetectionClient",
    "FrameSource",
    "GrpcClientOptions",
    "GrpcDetectionClient",
    "HttpRequired",
    "ImageInput",
    "InvalidRequest",
    "ItemError",
    "ItemResult",
    "LostFrame",
    "Overloaded",
    "Progress",
    "ProtocolError",
    "RateLimited",
    "RetryBudget",
    "ServerError",
    "Unauthorized",
    "parse_retry_after",
]
