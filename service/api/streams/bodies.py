"""Reading a stream's frame: multipart (file part ``frame``) or JSON (base64 ``frame``), with ``seq``,
``timestamp_ms``, the detection parameters of ``/v1/detect`` and the tracker's settings.

Detection parameters may also come in the query string (the body's win); the frame's own fields and
the tracker's come in the body, or, on a WebSocket, in its first text message. Without ``conf``, a
stream detects from 0.1, as Ultralytics' ``track()`` does: ByteTrack's second association matches
low-scoring boxes to tracks that already exist.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from service.api.bodies import (
    CLASSES_SCHEMA,
    ParamFields,
    Upload,
    form_file,
    form_params,
    media_type,
    read_form,
    resolve_params,
)
from service.engine.types import DetectParams
from service.errors import BadRequest, UnsupportedMediaType, ValidationFailed, validation_failed
from service.runtime.streams.tracking import TrackerSettings
from service.settings import Settings

__all__ = ["FrameJSONBody", "FrameRequest", "StreamParams", "read_frame", "stream_params"]

STREAM_CONF = 0.1  # the default confidence threshold of a stream's detections
_DETECT_KEYS = frozenset(ParamFields.model_fields)
_TRACKER_KEYS = frozenset(TrackerSettings.model_fields)


class FrameFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=0, le=2**63 - 1, description="The frame's number in its stream; each "
                     "frame's must be above the last one processed (gaps count as frames with "
                     "nothing seen)")
    timestamp_ms: float | None = Field(None, ge=0, allow_inf_nan=False,
                                       description="When the frame was taken (ms, the caller's clock)")


class FrameJSONBody(FrameFields, TrackerSettings, ParamFields):
    """The JSON form of a stream's frame; the tracker's settings count when the stream starts."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    frame: str = Field(description="The encoded frame (JPEG, PNG, ...), base64")
    conf: float = Field(STREAM_CONF, ge=0.0, le=1.0, allow_inf_nan=False,
                        description="Confidence threshold (0.1 for streams, as in Ultralytics' track)")
    classes: Annotated[list[str] | None, WithJsonSchema(CLASSES_SCHEMA)] = None


@dataclass(frozen=True)
class StreamParams:
    """What a stream's frames are detected and tracked with."""

    detect: DetectParams
    tracker: TrackerSettings


@dataclass(frozen=True)
class FrameRequest:
    upload: Upload
    seq: int
    timestamp_ms: float | None
    params: StreamParams


def _validated(model: type[BaseModel], values: Mapping[str, Any], *, strict: bool) -> Any:
    try:
        return model.model_validate(dict(values), strict=strict)
    except ValidationError as exc:
        raise validation_failed(exc.errors()) from None


def stream_params(query: Mapping[str, Any], body: Mapping[str, Any], names: Mapping[int, str], *,
                  strict: bool = False, frame_keys: frozenset[str] = frozenset()) -> StreamParams:
    """The detection parameters (query and body) and the tracker's settings (body); any other
    field of the body but ``frame_keys`` is refused."""
    unknown = set(body) - _DETECT_KEYS - _TRACKER_KEYS - frame_keys
    if unknown:
        raise ValidationFailed(f"{sorted(unknown)[0]}: unexpected field")
    detect = resolve_params({"conf": STREAM_CONF, **query},
                            {k: v for k, v in body.items() if k in _DETECT_KEYS}, names)
    tracker = _validated(TrackerSettings, {k: v for k, v in body.items() if k in _TRACKER_KEYS},
                         strict=strict)
    return StreamParams(detect, tracker)


def _frame_request(upload: Upload, fields: dict[str, Any], query: Mapping[str, Any],
                   names: Mapping[int, str], *, strict: bool) -> FrameRequest:
    frame_keys = frozenset(FrameFields.model_fields)
    own = _validated(FrameFields, {k: v for k, v in fields.items() if k in frame_keys}, strict=strict)
    params = stream_params(query, fields, names, strict=strict, frame_keys=frame_keys)
    return FrameRequest(upload, own.seq, own.timestamp_ms, params)


async def read_frame(request: Request, settings: Settings, query: Mapping[str, Any],
                     names: Mapping[int, str], stream_id: str) -> FrameRequest:
    """One frame of ``POST /v1/streams/{id}/frames`` and what it is to be processed with."""
    media = media_type(request)
    if media == "multipart/form-data":
        form = await read_form(request, settings)
        if len(form.getlist("frame")) != 1:
            raise ValidationFailed("frame: one file part named 'frame' is required")
        upload = await form_file(form["frame"], "frame")
        fields = form_params(form, "frame")
        return _frame_request(Upload(upload.data, stream_id), fields, query, names, strict=False)
    if media == "application/json" or media.endswith("+json"):
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise ValidationFailed("the body is not valid JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("frame"), str):
            raise ValidationFailed("frame: a base64 string is required")
        _validated(FrameJSONBody, payload, strict=True)  # JSON types, as documented
        try:
            data = base64.b64decode(payload.pop("frame"), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("frame: not valid base64") from None
        return _frame_request(Upload(data, stream_id), payload, query, names, strict=True)
    raise UnsupportedMediaType("send multipart/form-data (file part 'frame') or application/json")
