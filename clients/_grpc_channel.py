"""The gRPC client's transport: one channel (one HTTP/2 connection) to the service's
``inference.GRPCInferenceService`` and one try of a unary call over it, its failure as a
:class:`~clients.errors.ClientError` (the gRPC counterpart of ``clients._http.Sender``). The retry
loop around the tries is the client's (``RetryPolicy.run``).

grpcio and protobuf are imported when a channel is made (``pip install 'yoloserve[grpc]'``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from clients._retry import Try
from clients.errors import ConnectError, error_from_grpc
from wire.headers import REQUEST_ID

__all__ = ["CALLS", "USER_AGENT", "GrpcChannel"]

USER_AGENT = "yoloserve-client/0.1"
CALLS = ("ModelInfer", "ServerReady", "ModelConfig", "RepositoryIndex")
_MESSAGE_LIMIT = 64 * 1024 * 1024  # the service bounds what it takes (max_body_bytes)


def _grpc() -> Any:
    try:
        import grpc
        import grpc.aio
    except ImportError as exc:  # the light install
        raise ImportError("the gRPC client needs grpcio and protobuf: pip install "
                          "'yoloserve[grpc]'") from exc
    return grpc


class GrpcChannel:
    """The channel to ``target`` and the protocol's calls the client makes over it (``CALLS``);
    every try carries ``metadata``, the API key, the request id and the try's number."""

    def __init__(self, target: str, *, connect_timeout: float, attempt_timeout: float | None,
                 metadata: Mapping[str, str] | None, api_key: str | None) -> None:
        grpc = _grpc()
        from clients._oip_messages import MESSAGES, SERVICE

        self.target = target
        self.messages = MESSAGES
        self._attempt_timeout = attempt_timeout
        self._connect_timeout = connect_timeout
        self._connectivity = grpc.ChannelConnectivity
        self._metadata = list((metadata or {}).items())
        if api_key:
            self._metadata.append(("authorization", f"Bearer {api_key}"))
        self._rpc_error = grpc.aio.AioRpcError
        self._channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
            ("grpc.max_send_message_length", _MESSAGE_LIMIT),
            ("grpc.primary_user_agent", USER_AGENT),
            # a broken connection is tried again within a second, not after grpcio's usual
            # backoff (up to 120 s): our retries wait for that attempt (see _connect)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", int(connect_timeout * 1000)),
            ("grpc.max_reconnect_backoff_ms", 1000)])
        self._calls = {name: self._channel.unary_unary(
            f"/{SERVICE}/{name}", request_serializer=MESSAGES[f"{name}Request"].SerializeToString,
            response_deserializer=MESSAGES[f"{name}Response"].FromString) for name in CALLS}

    async def close(self) -> None:
        await self._channel.close()

    async def unary(self, method: str, request: Any, attempt: Try) -> Any:
        """One try of one call, its failure as a :class:`ClientError`."""
        limit = attempt.remaining
        if self._attempt_timeout is not None:
            limit = min(limit, self._attempt_timeout)
        metadata = (*self._metadata, (REQUEST_ID, attempt.request_id),
                    ("x-attempt", str(attempt.number)))
        if attempt.number > 1:
            await self._connect(min(self._connect_timeout, limit), attempt.request_id)
        try:
            return await self._calls[method](request, timeout=limit, metadata=metadata)
        except self._rpc_error as exc:
            trailers = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
            raise error_from_grpc(exc.code().value[0], exc.details(), trailers,
                                  request_id=attempt.request_id,
                                  timer_retryable=limit < attempt.remaining) from exc

    async def _connect(self, within: float, request_id: str) -> None:
        """Before a retry, as the HTTP client opens a new connection: wait for the channel's
        next connection attempt (at most ``within`` s). A retry would otherwise fail at once while
        grpcio waits out its reconnect backoff, however soon the server is back."""
        ready, failed = self._connectivity.READY, self._connectivity.TRANSIENT_FAILURE
        tried = False
        try:
            async with asyncio.timeout(within):
                state = self._channel.get_state(try_to_connect=True)
                while state is not ready:
                    if state is failed and tried:
                        raise ConnectError(f"no connection to {self.target}",
                                           code="connect_failed", request_id=request_id,
                                           retryable=True)
                    tried = tried or state is self._connectivity.CONNECTING
                    await self._channel.wait_for_state_change(state)
                    state = self._channel.get_state(try_to_connect=True)
        except TimeoutError as exc:
            raise ConnectError(f"no connection to {self.target} within {within:.3g}s",
                               code="connect_timeout", request_id=request_id,
                               retryable=True) from exc
