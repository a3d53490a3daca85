"""The Open Inference Protocol's JSON bodies, for validation and the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DATATYPES",
    "InferenceRequest",
    "InferenceResponse",
    "LiveResponse",
    "ModelMetadata",
    "ModelReadyResponse",
    "ReadyResponse",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadata",
    "TensorMetadata",
    "V2Error",
    "inline_schema",
]

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                   "INT64", "FP16", "FP32", "FP64", "BYTES"]
DATATYPES: tuple[str, ...] = Datatype.__args__  # type: ignore[attr-defined]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestInput(_Model):
    name: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(description="Dimensions")
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: the bytes of this input after the JSON")
    data: list[Any] | None = Field(default=None, description="The elements, flat or nested; "
                                   "BYTES as strings (IMAGE: base64 of an encoded image)")


class RequestOutput(_Model):
    name: str
    parameters: dict[str, Any] | None = Field(default=None,
                                              description="binary_data: answer it in binary")


class InferenceRequest(_Model):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_output; for detection models conf, iou, max_det")
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Model):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(_Model):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(_Model):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 where a dimension varies")


class ServerMetadata(_Model):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(_Model):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveResponse(_Model):
    live: bool


class ReadyResponse(_Model):
    ready: bool


class ModelReadyResponse(_Model):
    name: str
    ready: bool


class V2Error(_Model):
    error: str = Field(description="What went wrong, for people")


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models written in place (no ``$defs``), for a
    request body that the route reads itself (OpenAPI has no components for it)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result
