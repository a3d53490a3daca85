"""Tensors of the Open Inference Protocol over gRPC: a ``ModelInferRequest`` in, a
``ModelInferResponse`` out.

An input's data is either in ``raw_input_contents`` (one entry per input, in order: the tensor's
bytes, little-endian, row-major; BYTES elements each a 4-byte little-endian length and the bytes)
or in its typed ``contents`` (``fp32_contents``, ``bytes_contents``…). Outputs are answered the
way Triton answers them, in ``raw_output_contents``; a request that sent typed contents gets typed
contents back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.api.grpc.proto import grpc_service_pb2 as pb
from service.api.oip import DTYPES, Decoded, Output, count, invalid, pack_bytes, split_bytes

__all__ = ["decode_request", "encode_response", "parameters"]

# the typed field of InferTensorContents that holds each datatype (FP16 has none: raw only)
_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def parameters(given: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A parameter map as plain values."""
    out: dict[str, Any] = {}
    for name, param in given.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[name] = getattr(param, which)
    return out


def _raw(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes, n: int
         ) -> NDArray[Any] | list[bytes]:
    if tensor.datatype == "BYTES":
        return split_bytes(raw, n, tensor.name)
    dtype = np.dtype(DTYPES[tensor.datatype]).newbyteorder("<")
    if len(raw) != n * dtype.itemsize:
        raise invalid(f"input {tensor.name!r}: {len(raw)} bytes for shape {list(tensor.shape)}")
    return np.frombuffer(raw, dtype).reshape(tuple(tensor.shape))


def _typed(tensor: pb.ModelInferRequest.InferInputTensor, n: int) -> NDArray[Any] | list[bytes]:
    field = _FIELDS.get(tensor.datatype)
    if field is None:
        raise invalid(f"input {tensor.name!r}: {tensor.datatype} data goes in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != n:
        raise invalid(f"input {tensor.name!r}: {len(values)} values for shape {list(tensor.shape)}")
    if tensor.datatype == "BYTES":
        return list(values)
    return np.asarray(values, dtype=DTYPES[tensor.datatype]).reshape(tuple(tensor.shape))


def decode_request(request: pb.ModelInferRequest) -> Decoded:
    """The request's inputs as arrays (BYTES: lists of bytes); 400 on a wrong size or type."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    if not request.inputs:
        raise invalid("the request has no inputs")
    inputs: dict[str, NDArray[Any] | list[bytes]] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.datatype not in DTYPES and tensor.datatype != "BYTES":
            raise invalid(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
        if any(d < 0 for d in tensor.shape):
            raise invalid(f"input {tensor.name!r}: negative dimension in {list(tensor.shape)}")
        n = count(tensor.shape)
        inputs[tensor.name] = _raw(tensor, raw[i], n) if raw else _typed(tensor, n)
    outputs = [o.name for o in request.outputs] or None
    typed = bool(request.inputs) and not raw
    # BYTES arrive as bytes here (never base64): every input counts as binary
    return Decoded(request.id or None, parameters(request.parameters), inputs, outputs,
                   binary_default=not typed, binary_inputs=frozenset(inputs))


def encode_response(model: str, version: str, request: Decoded, outputs: list[Output]
                    ) -> pb.ModelInferResponse:
    """The outputs in ``raw_output_contents`` (typed ``contents`` when the request sent typed)."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request.id or "")
    for out in outputs:
        tensor = response.outputs.add(name=out.name, datatype=out.datatype, shape=out.array.shape)
        if request.binary_default:
            response.raw_output_contents.append(
                pack_bytes(out.array.ravel()) if out.datatype == "BYTES"
                else np.ascontiguousarray(out.array, out.array.dtype.newbyteorder("<")).tobytes())
        else:
            getattr(tensor.contents, _FIELDS[out.datatype]).extend(out.array.ravel().tolist())
    return response
