"""Reading detection requests: multipart or base64 JSON bodies, and their parameters.

Parameters may come from the query string, form fields or JSON fields (the body wins); they are
validated by one pydantic model so that every bad value is a 422 ``validation_error``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from service.engine.types import DetectParams
from service.errors import BadRequest, UnsupportedMediaType, ValidationFailed, validation_failed
from service.settings import Settings
from wire.params import CONF, IOU, MAX_DET

__all__ = [
    "CLASSES_SCHEMA",
    "DetectJSONBody",
    "ParamFields",
    "Upload",
    "form_file",
    "form_params",
    "media_type",
    "read_batch",
    "read_form",
    "read_single",
    "resolve_params",
]


MaskFormat = Literal["polygons", "rle", "none"]
MAX_NAME = 512  # longest image name (echoed in the answer): JSON ``image_name`` or a file name


@dataclass(frozen=True)
class Upload:
    data: bytes
    name: str


class ParamFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conf: float = CONF.field()
    iou: float = IOU.field()
    max_det: int = MAX_DET.field()
    classes: list[str] | None = None
    mask_format: MaskFormat = Field("polygons", description="segment models: masks as polygons, "
                                                            "COCO RLE, or none")

    @field_validator("classes", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if v is None:
            return None
        items = v if isinstance(v, list) else [v]
        if not all(isinstance(i, str | int) and not isinstance(i, bool) for i in items):
            raise ValueError("class ids or names: a list of them, or a comma-separated string")
        out = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
        return out or None


_ID_OR_NAME: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
CLASSES_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "array", "items": _ID_OR_NAME}, *_ID_OR_NAME["anyOf"], {"type": "null"}],
    "description": "Class ids or names to keep: a list, or a comma-separated string",
}


class DetectJSONBody(ParamFields):
    """The JSON form of ``POST /v1/detect``: a base64 image and optional parameters."""

    image: str = Field(description="The image file's bytes, base64-encoded")
    image_name: str | None = Field(None, max_length=MAX_NAME)
    # what the validator accepts, documented as such (the field type is the result: names)
    classes: Annotated[list[str] | None, WithJsonSchema(CLASSES_SCHEMA)] = None


def resolve_params(query: Mapping[str, Any], body: Mapping[str, Any],
                   names: Mapping[int, str]) -> DetectParams:
    """The parameters of a request: the body's win over the query's, but a bad value is refused
    wherever it was sent (one that the body overrides included)."""
    if query and body:
        _resolve(query, names)
    return _resolve({**query, **body}, names)


def _resolve(values: Mapping[str, Any], names: Mapping[int, str]) -> DetectParams:
    try:
        fields = ParamFields.model_validate(dict(values))
    except ValidationError as exc:
        raise validation_failed(exc.errors()) from None
    classes: frozenset[int] | None = None
    if fields.classes:
        by_name = {v: k for k, v in names.items()}
        ids = set()
        for c in fields.classes:
            cid = int(c) if c.lstrip("-").isdigit() else by_name.get(c)
            if cid is None or cid not in names:
                raise ValidationFailed(f"classes: unknown class {c!r}")
            ids.add(cid)
        classes = frozenset(ids)
    return DetectParams(conf=fields.conf, iou=fields.iou, max_det=fields.max_det, classes=classes,
                        mask_format=fields.mask_format)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request, settings: Settings) -> Any:
    try:
        return await request.form(
            max_files=settings.max_batch_items, max_fields=settings.max_parts,
            max_part_size=settings.max_body_bytes,
        )
    except MultiPartException as exc:
        raise ValidationFailed(f"malformed multipart body: {exc.message}") from None
    except HTTPException as exc:  # Starlette turns MultiPartException into a 400 inside an app
        raise ValidationFailed(f"malformed multipart body: {exc.detail}") from None


async def form_file(value: Any, field: str) -> Upload:
    if not isinstance(value, UploadFile):
        raise ValidationFailed(f"{field}: expected a file part")
    if value.filename is not None and len(value.filename) > MAX_NAME:
        raise ValidationFailed(f"{field}: the file name is over {MAX_NAME} characters")
    return Upload(await value.read(), value.filename or "image")


def form_params(form: Any, skip: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key == skip:
            continue
        if key == "classes":
            params.setdefault("classes", []).append(value)
        elif key in params or isinstance(value, UploadFile):
            raise ValidationFailed(f"{key}: unexpected or repeated field")
        else:
            params[key] = value
    return params


def _decode_json(body: bytes) -> tuple[Upload, dict[str, Any]]:
    try:
        payload = DetectJSONBody.model_validate(orjson.loads(body), strict=True)  # JSON types as documented
    except orjson.JSONDecodeError:
        raise ValidationFailed("the body is not valid JSON") from None
    except ValidationError as exc:
        raise validation_failed(exc.errors()) from None
    try:
        data = base64.b64decode(payload.image, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image: not valid base64") from None
    params = payload.model_dump(exclude={"image", "image_name"}, exclude_unset=True)
    return Upload(data, payload.image_name or "image"), params


async def read_single(request: Request, settings: Settings) -> tuple[Upload, dict[str, Any]]:
    """The one image of a detect/annotate request and the parameters sent in its body."""
    media = media_type(request)
    if media == "multipart/form-data":
        form = await read_form(request, settings)
        if "image" not in form:
            raise ValidationFailed("image: a file part named 'image' is required")
        if len(form.getlist("image")) > 1:
            raise ValidationFailed("image: send one image here, or use /v1/detect/batch")
        return await form_file(form["image"], "image"), form_params(form, "image")
    if media == "application/json" or media.endswith("+json"):
        return _decode_json(await request.body())
    raise UnsupportedMediaType("send multipart/form-data (field 'image') or application/json")


async def read_batch(request: Request, settings: Settings) -> tuple[list[Upload], dict[str, Any]]:
    """The images of a batch request (repeated field ``images``) and its parameters."""
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMediaType("send multipart/form-data with repeated file parts 'images'")
    form = await read_form(request, settings)
    files = form.getlist("images")
    if not files:
        raise ValidationFailed("images: at least one file part named 'images' is required")
    if len(files) > settings.max_batch_items:
        raise ValidationFailed(f"images: at most {settings.max_batch_items} images per request")
    uploads = [await form_file(f, "images") for f in files]
    return uploads, form_params(form, "images")
