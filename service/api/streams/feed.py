"""``WS /v1/streams/{id}/ws``: a stream's frames as binary messages, one JSON answer per frame, in order.

An optional first text message sets the parameters (those of a frame request but ``seq``, which the
server counts). Up to ``stream_ws_window`` frames are detected at once, so that a steady feed fills
the shared batches; their answers are sent in the order the frames came. A frame's error is its
answer (the error body); a connection that cannot be served (API key, not ready, bad parameters) is
told why and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from service.api.deps import authorize, ready_inferencer
from service.api.streams.bodies import StreamParams, stream_params
from service.api.streams.render import stream_result
from service.errors import PayloadTooLarge, ServiceError, Unavailable, ValidationFailed, boundary_error
from service.runtime.inferencer import Inferencer
from service.runtime.state import AppState
from service.runtime.streams.pipeline import TrackedFrame, process_frame
from service.runtime.streams.registry import StreamRegistry
from wire.ids import new_request_id
from wire.schemas import valid_stream_id

__all__ = ["serve_feed"]

log = logging.getLogger(__name__)

_POLICY_VIOLATION = 1008
_TRY_AGAIN_LATER = 1013
Pending = asyncio.Task[TrackedFrame]


class _Feed:
    def __init__(self, ws: WebSocket, state: AppState, inferencer: Inferencer, streams: StreamRegistry,
                 stream_id: str, request_id: str) -> None:
        self.ws, self.state, self.inferencer, self.streams = ws, state, inferencer, streams
        self.stream_id, self.request_id = stream_id, request_id
        self.params = stream_params({}, {}, inferencer.classes)
        self.pending: asyncio.Queue[Pending] = asyncio.Queue()
        self.window = asyncio.Semaphore(state.settings.stream_ws_window)  # frames not yet answered
        self.in_flight: set[Pending] = set()
        self.seq: int | None = None  # the last frame's number

    def parameters(self, text: str) -> StreamParams:
        try:
            given = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValidationFailed("the parameters message is not valid JSON") from None
        if not isinstance(given, dict):
            raise ValidationFailed("the parameters message must be a JSON object")
        return stream_params({}, given, self.inferencer.classes, strict=True)

    async def frame(self, data: bytes) -> Pending:
        """Start one frame, numbered after the stream's last one (a frame that fails keeps its
        number, which then counts as a gap)."""
        self.seq = await self.streams.next_seq(self.stream_id) if self.seq is None else self.seq + 1
        if len(data) > self.state.settings.max_body_bytes:
            err = PayloadTooLarge(f"the frame is over {self.state.settings.max_body_bytes} bytes")
            return asyncio.ensure_future(_raise(err))
        timeout_ms = self.state.settings.default_timeout_ms
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        task = asyncio.ensure_future(process_frame(
            self.streams, self.inferencer, self.state.metrics, self.stream_id, data,
            self.stream_id, self.seq, self.params.detect, self.params.tracker, deadline))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return task

    async def receive(self) -> None:
        first = True
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            if text is not None:
                if not first:
                    raise ValidationFailed("parameters go in the first message only")
                self.params = self.parameters(text)
            elif data is not None:
                await self.window.acquire()  # while the window is full, the next frame waits
                self.pending.put_nowait(await self.frame(data))
            first = False

    async def send(self) -> None:
        while True:
            task = await self.pending.get()
            try:
                body = orjson.dumps(stream_result(await task).model_dump(mode="json"))
            except Exception as exc:
                body = boundary_error(exc, "stream frame failed").body(self.request_id)
            await self.ws.send_text(body.decode())
            self.window.release()


async def _raise(err: ServiceError) -> TrackedFrame:
    raise err


async def _refuse(ws: WebSocket, err: ServiceError, request_id: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(err.body(request_id).decode())
        code = _TRY_AGAIN_LATER if isinstance(err, Unavailable) else _POLICY_VIOLATION
        await ws.close(code=code, reason=err.code)


async def serve_feed(ws: WebSocket, state: AppState, stream_id: str) -> None:
    request_id = new_request_id()
    await ws.accept()
    try:
        await authorize(ws, state)
        if not valid_stream_id(stream_id):
            raise ValidationFailed("stream_id: 1-128 characters of letters, digits, '.', '_' and '-'")
        inferencer = await ready_inferencer(state)
        inferencer.require("detect", "segment", "pose", "obb")
        assert state.streams is not None
        feed = _Feed(ws, state, inferencer, state.streams, stream_id, request_id)
    except ServiceError as err:
        await _refuse(ws, err, request_id)
        return
    sender = asyncio.create_task(feed.send(), name=f"ws-send-{stream_id}")
    try:
        await feed.receive()  # until the client leaves: what is still in flight has no reader
    except ServiceError as err:
        sender.cancel()
        await _refuse(ws, err, request_id)
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        for task in list(feed.in_flight):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await sender
        if ws.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
                await ws.close()
