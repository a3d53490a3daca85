"""``inference.GRPCInferenceService``: the Open Inference Protocol's calls, over the same runtime
as ``/v2`` (the models, admission, deadlines and batchers) through :mod:`service.api.oip`.

The call's gRPC deadline is the request's deadline (``X-Request-Timeout-Ms`` over HTTP); API keys
come as ``authorization: Bearer KEY`` or ``x-api-key`` metadata. ``ModelStreamInfer`` answers the
requests of a stream in order, up to ``STREAM_WINDOW`` of them in flight at once; an error ends
only its request (``error_message``), as Triton does. When the service drains, a stream answers
what it has taken and ends with ``UNAVAILABLE``. ``RepositoryIndex`` lists the models, and
``ModelConfig`` carries the rest of ``/v1/model`` in its ``parameters`` (see ``repository``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from service.api import oip
from service.api.deps import check_access, ready_inferencer
from service.api.grpc.boundary import abort, error_of
from service.api.grpc.proto import grpc_service_pb2 as pb
from service.api.grpc.proto import model_config_pb2
from service.api.grpc.repository import index_entries, info_parameters
from service.api.grpc.tensors import decode_request, encode_response
from service.errors import Draining, ServiceError
from service.runtime.registry import ModelRegistry
from service.runtime.state import AppState, Lifecycle
from wire.grpc_status import grpc_status
from wire.headers import API_KEY, AUTHORIZATION, REQUEST_ID
from wire.ids import new_request_id, valid_request_id

__all__ = ["STREAM_WINDOW", "InferenceServicer"]

T = TypeVar("T")
STREAM_WINDOW = 8  # requests of one stream in flight at once
EXTENSIONS = ["model_configuration"]


class InferenceServicer:
    def __init__(self, state: AppState, version: str) -> None:
        self.state = state
        self.version = version
        self.closing = asyncio.Event()  # set when the service drains: streams end

    def __getattr__(self, name: str) -> Callable[[Any, Any], Awaitable[Any]]:
        """The protocol's other calls (statistics, loading and unloading models, shared memory,
        trace): ``UNIMPLEMENTED``."""
        if not name[:1].isupper():
            raise AttributeError(name)

        async def unimplemented(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented")

        return unimplemented

    # -- the calls --------------------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.state.lifecycle is Lifecycle.READY
                                      and not self.state.overloaded)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="yoloserve", version=self.version,
                                         extensions=EXTENSIONS)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            oip.target(await self._registry(), request.name, request.version)
            return pb.ModelReadyResponse(ready=True)
        return await self._answer("ModelReady", context, work)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            found = oip.target(await self._registry(), request.name, request.version)
            return json_format.ParseDict(oip.model_metadata(found), pb.ModelMetadataResponse())
        return await self._answer("ModelMetadata", context, work)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            registry = await self._registry()
            found = oip.target(registry, request.name, request.version)
            config = json_format.ParseDict(oip.model_config(found, self.state.settings),
                                           model_config_pb2.ModelConfig(),
                                           ignore_unknown_fields=True)
            for key, value in info_parameters(found, registry).items():
                config.parameters[key].string_value = value
            return pb.ModelConfigResponse(config=config)
        return await self._answer("ModelConfig", context, work)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            entries = index_entries(await self._registry())
            return json_format.ParseDict({"models": entries}, pb.RepositoryIndexResponse())
        return await self._answer("RepositoryIndex", context, work)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            await self._admit(context)
            return await self._infer(request, self._deadline(context))
        return await self._answer("ModelInfer", context, work)

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any
                               ) -> AsyncIterator[Any]:
        start, status = time.perf_counter(), "OK"
        rid = _request_id(context)
        try:
            await self._admit(context)
            deadline = self._deadline(context)
            window: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue()
            room = asyncio.Semaphore(STREAM_WINDOW)
            reader = asyncio.create_task(self._read(requests, window, room, deadline))
            try:
                while (answer := await window.get()) is not None:
                    yield await self._stream_answer(answer)
                    room.release()
                if reader.result():  # stopped by a drain, not by the client
                    raise Draining("the service is shutting down; retry on another instance",
                                   retry_after=1.0)
            finally:
                reader.cancel()
                while not window.empty():
                    if (left := window.get_nowait()) is not None:
                        left.cancel()
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception as exc:
            err = error_of(exc)
            status = grpc_status(err.row).name
            await abort(context, err, rid)
        finally:
            self._observe("ModelStreamInfer", status, start)

    # -- helpers ----------------------------------------------------------------------------------
    async def _answer(self, method: str, context: Any, work: Callable[[], Awaitable[T]]) -> T:
        """Runs one unary call: its status counted and timed, an error answered by the table."""
        start, status = time.perf_counter(), "OK"
        rid = _request_id(context)
        try:
            answer = await work()
            context.set_trailing_metadata(((REQUEST_ID, rid),))
            return answer
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception as exc:
            err = error_of(exc)
            status = grpc_status(err.row).name
            await abort(context, err, rid)
        finally:
            self._observe(method, status, start)

    def _observe(self, method: str, status: str, start: float) -> None:
        metrics = self.state.metrics
        metrics.grpc_requests.labels(method, status).inc()
        metrics.grpc_latency.labels(method).observe(time.perf_counter() - start)

    async def _registry(self) -> ModelRegistry:
        await ready_inferencer(self.state)  # 503 not_ready while loading, draining after SIGTERM
        assert self.state.models is not None
        return self.state.models

    async def _admit(self, context: Any) -> None:
        """The API key and the rate limit, from the call's metadata and peer."""
        metadata = {k.lower(): v for k, v in context.invocation_metadata() or ()
                    if isinstance(v, str)}
        key = metadata.get(API_KEY)
        auth = metadata.get(AUTHORIZATION, "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        await check_access(self.state, key, _peer_host(context.peer()))

    def _deadline(self, context: Any) -> float | None:
        remaining: float | None = context.time_remaining()
        if remaining is not None:
            return time.monotonic() + remaining
        default = self.state.settings.default_timeout_ms
        return None if default is None else time.monotonic() + default / 1000

    async def _infer(self, request: Any, deadline: float | None) -> Any:
        found = oip.target(await self._registry(), request.model_name, request.model_version)
        decoded = decode_request(request)
        outputs = await oip.infer(found, decoded, deadline, protocol="grpc")
        return encode_response(found.name, oip.VERSION, decoded, outputs)

    async def _read(self, requests: AsyncIterator[Any],
                    window: asyncio.Queue[asyncio.Future[Any] | None], room: asyncio.Semaphore,
                    deadline: float | None) -> bool:
        """Takes a stream's requests until it ends (False) or the service drains (True)."""
        drained = False
        closing = asyncio.ensure_future(self.closing.wait())
        following: asyncio.Future[Any] | None = None
        try:
            iterator = aiter(requests)
            while True:
                following = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({following, closing},
                                             return_when=asyncio.FIRST_COMPLETED)
                if following not in done:
                    following.cancel()
                    drained = True
                    break
                try:
                    request = following.result()
                except StopAsyncIteration:
                    break
                if self.state.lifecycle is not Lifecycle.READY:
                    drained = True
                    break
                await room.acquire()
                window.put_nowait(asyncio.ensure_future(self._infer(request, deadline)))
        finally:
            closing.cancel()
            if following is not None:
                following.cancel()
                following.add_done_callback(_retrieve)
            window.put_nowait(None)  # the answers end here (the queue is unbounded: never blocks)
        return drained

    async def _stream_answer(self, answer: asyncio.Future[Any]) -> Any:
        try:
            return pb.ModelStreamInferResponse(infer_response=await answer)
        except ServiceError as exc:
            return pb.ModelStreamInferResponse(error_message=exc.message)
        except Exception as exc:
            return pb.ModelStreamInferResponse(error_message=error_of(exc).message)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A read the stream no longer waits for: its end (or error) is not worth a warning."""
    if not future.cancelled():
        future.exception()


def _request_id(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID and isinstance(value, str) and valid_request_id(value):
            return value
    return new_request_id()


def _peer_host(peer: str | None) -> str | None:
    """``ipv4:1.2.3.4:5678`` or ``ipv6:[::1]:5678`` -> the address."""
    if not peer:
        return None
    _, _, rest = peer.partition(":")
    host, _, _ = rest.rpartition(":")
    return host.strip("[]") or None

