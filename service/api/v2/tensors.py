"""Tensors of the Open Inference Protocol: JSON ``data`` and Triton's binary-data extension.

A request body is a JSON header, followed, when ``Inference-Header-Content-Length`` says so, by the
binary data of the inputs whose ``parameters.binary_data_size`` is set, in input order. BYTES
elements in binary form are each a 4-byte little-endian length and the bytes; in JSON they are
strings. Outputs are answered the same way: binary when the request asks for it
(``binary_data_output`` for all, or an output's ``binary_data``), else as flat JSON ``data``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import ValidationError

from service.api.oip import DTYPES, Decoded, Output, count, invalid, pack_bytes, split_bytes
from service.api.v2.schemas import InferenceRequest
from service.errors import validation_failed

__all__ = ["decode_request", "encode_response"]

def _json_bytes(data: list[Any], name: str) -> list[bytes]:
    flat = np.asarray(data, dtype=object).ravel().tolist()
    if not all(isinstance(x, str) for x in flat):
        raise invalid(f"input {name!r}: BYTES elements in JSON are strings")
    return [x.encode() for x in flat]


def decode_request(body: bytes, header_length: int | None) -> Decoded:
    """Parse a request body; raise 400 (not JSON, wrong sizes) or 422 (against the schema)."""
    head = body if header_length is None else body[:header_length]
    if header_length is not None and not 0 <= header_length <= len(body):
        raise invalid("Inference-Header-Content-Length is outside the body")
    try:
        request = InferenceRequest.model_validate(orjson.loads(head))
    except orjson.JSONDecodeError:
        raise invalid("the inference header is not JSON") from None
    except ValidationError as exc:
        raise validation_failed(exc.errors()) from None
    binary = memoryview(body)[len(head):]
    inputs: dict[str, NDArray[Any] | list[bytes]] = {}
    at = 0
    sent_binary: set[str] = set()
    for tensor in request.inputs:
        n = count(tensor.shape)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or at + size > len(binary):
                raise invalid(f"input {tensor.name!r}: binary_data_size is outside the body")
            raw = bytes(binary[at: at + size])
            at += size
            sent_binary.add(tensor.name)
            if tensor.datatype == "BYTES":
                inputs[tensor.name] = split_bytes(raw, n, tensor.name)
                continue
            dtype = np.dtype(DTYPES[tensor.datatype])
            if size != n * dtype.itemsize:
                raise invalid(f"input {tensor.name!r}: {size} bytes for shape {tensor.shape}")
            inputs[tensor.name] = np.frombuffer(raw, dtype).reshape(tensor.shape)
            continue
        if tensor.data is None:
            raise invalid(f"input {tensor.name!r} has neither data nor binary_data_size")
        if tensor.datatype == "BYTES":
            inputs[tensor.name] = _json_bytes(tensor.data, tensor.name)
            if len(inputs[tensor.name]) != n:
                raise invalid(f"input {tensor.name!r}: data does not fit shape {tensor.shape}")
            continue
        try:
            array = np.asarray(tensor.data, dtype=DTYPES[tensor.datatype])
        except (ValueError, TypeError, OverflowError):
            raise invalid(f"input {tensor.name!r}: data is not {tensor.datatype}") from None
        if array.size != n:
            raise invalid(f"input {tensor.name!r}: {array.size} values for shape {tensor.shape}")
        inputs[tensor.name] = array.reshape(tensor.shape)
    if at != len(binary):
        raise invalid("binary data left over after the inputs")
    params = dict(request.parameters or {})
    outputs = None if request.outputs is None else [o.name for o in request.outputs]
    wanted = {o.name: bool((o.parameters or {}).get("binary_data", False))
              for o in request.outputs or []}
    default = bool(params.get("binary_data_output", False))
    return Decoded(request.id, params, inputs, outputs, wanted, default, frozenset(sent_binary))


def encode_response(model: str, version: str, request: Decoded, outputs: Sequence[Output]
                    ) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype,
                                 "shape": list(out.array.shape)}
        text = out.datatype == "BYTES"  # elements are bytes: length-prefixed in binary form
        if request.binary.get(out.name, request.binary_default):
            blob = pack_bytes(out.array.ravel()) if text \
                else np.ascontiguousarray(out.array).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = [b.decode() for b in out.array.ravel()] if text \
                else out.array.ravel().tolist()
        entries.append(entry)
    header: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        header["id"] = request.id
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
