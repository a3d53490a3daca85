"""``/v1/streams``: a video stream's frames in (POST or WebSocket), its tracked detections out."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request, Response, WebSocket

from service.api.deps import AuthDep, DeadlineDep, InferencerDep, QueryParamsDep, StateDep, StreamsDep
from service.api.docs import errors
from service.api.streams.bodies import FrameJSONBody, read_frame
from service.api.streams.feed import serve_feed
from service.api.streams.render import stream_result
from service.runtime.streams.pipeline import process_frame
from wire import errors as codes
from wire.schemas import STREAM_ID_PATTERN, StreamList, StreamResult

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["streams"])

StreamId = Annotated[str, Path(pattern=STREAM_ID_PATTERN, description="1-128 characters of "
                               "letters, digits, '.', '_' and '-'")]


def _frame_body() -> dict[str, Any]:
    """Multipart and JSON forms of a frame, from the JSON model (the frame a file part in one)."""
    schema = FrameJSONBody.model_json_schema()
    props = dict(schema["properties"])
    props["frame"] = {"type": "string", "format": "binary", "description": "The encoded frame"}
    props["classes"] = {"type": "string", "description": "Comma-separated class ids or names"}
    multipart = {"type": "object", "required": ["frame", "seq"], "properties": props}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": multipart}, "application/json": {"schema": schema}}}}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The service's error responses, with the stream codes described."""
    out = errors(*statuses)
    for row in (codes.STREAM_NOT_FOUND, codes.STALE_FRAME, codes.TOO_MANY_STREAMS):
        if row.status in out:
            entry = out[row.status]
            entry["description"] = "; ".join(
                part for part in (entry.get("description"), f"`{row.code}`: {row.when}") if part)
            if row.retry_after:
                entry.setdefault("headers", errors(503)[503]["headers"])
    return out


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


@router.post("/streams/{stream_id}/frames", response_model=StreamResult,
             responses=_responses(400, 401, 404, 409, 413, 415, 422, 429, 503, 504),
             openapi_extra=_frame_body(), summary="Detect and track objects in one frame of a stream")
async def post_frame(request: Request, stream_id: StreamId, inferencer: InferencerDep,
                     streams: StreamsDep, query: QueryParamsDep, state: StateDep,
                     deadline: DeadlineDep, _auth: AuthDep) -> Response:
    inferencer.require("detect", "segment", "pose", "obb")
    frame = await read_frame(request, state.settings, query.values, inferencer.classes, stream_id)
    tracked = await process_frame(
        streams, inferencer, state.metrics, stream_id, frame.upload.data, frame.upload.name,
        frame.seq, frame.params.detect, frame.params.tracker, deadline, frame.timestamp_ms)
    request.scope["state"]["log"].update(stream=stream_id, seq=frame.seq,
                                         detections=len(tracked.track_ids))
    return _json(stream_result(tracked).model_dump(mode="json"))


@router.get("/streams", response_model=StreamList, responses=_responses(401, 429, 503),
            summary="The video streams this instance holds (every worker's)")
async def list_streams(streams: StreamsDep, _auth: AuthDep) -> Response:
    listed = StreamList(streams=await streams.summaries())
    return _json(listed.model_dump(mode="json"))


@router.delete("/streams/{stream_id}", status_code=204, response_class=Response,
               responses={204: {"description": "The stream and its tracks are gone"},
                          **_responses(401, 404, 422, 429, 503)},
               summary="End a stream and forget its tracks")
async def delete_stream(stream_id: StreamId, streams: StreamsDep, _auth: AuthDep) -> Response:
    await streams.remove(stream_id)
    return Response(status_code=204)


@router.websocket("/streams/{stream_id}/ws")
async def stream_feed(websocket: WebSocket, stream_id: str, state: StateDep) -> None:
    await serve_feed(websocket, state, stream_id)
