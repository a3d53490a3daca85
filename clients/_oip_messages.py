"""The messages of the Open Inference Protocol's gRPC service (KServe v2 / Triton
``inference.GRPCInferenceService``) that the client sends and reads, declared here field by field
from the published ``grpc_service.proto`` and ``model_config.proto``: only what the client uses.

Why not the generated modules: those live in the service (the light install has no ``service``);
a subset keeps the client small, and a message read with fields it does not declare ignores them,
as protobuf does. The field numbers are the protocol's; a test checks them against the service's
generated modules. The classes live in a descriptor pool of their own, beside any other copy of
package ``inference`` (``tritonclient``'s, KServe's, the service's) in the same process.

Imported only by the gRPC client, which needs ``protobuf`` (``pip install 'yoloserve[grpc]'``).
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["MESSAGES", "SERVICE"]

SERVICE: Final = "inference.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BYTES, _BOOL = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_BOOL
_INT32, _INT64, _UINT64, _DOUBLE, _MSG = (_F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT64,
                                          _F.TYPE_DOUBLE, _F.TYPE_MESSAGE)
_REPEATED = "repeated"

# a field: (name, number, type, its message type or None, "repeated" or "", its oneof or "")
_Field = tuple[str, int, int, str | None, str, str]


def _f(name: str, number: int, kind: int, type_name: str | None = None, label: str = "",
       oneof: str = "") -> _Field:
    return (name, number, kind, type_name, label, oneof)


_PARAM_MAP = _f("parameters", 4, _MSG, "ParametersEntry", _REPEATED)
_DECLARED: Final[dict[str, list[_Field]]] = {
    "ServerReadyRequest": [],
    "ServerReadyResponse": [_f("ready", 1, _BOOL)],
    "ModelReadyRequest": [_f("name", 1, _STRING), _f("version", 2, _STRING)],
    "ModelReadyResponse": [_f("ready", 1, _BOOL)],
    "InferParameter": [
        _f("bool_param", 1, _BOOL, oneof="parameter_choice"),
        _f("int64_param", 2, _INT64, oneof="parameter_choice"),
        _f("string_param", 3, _STRING, oneof="parameter_choice"),
        _f("double_param", 4, _DOUBLE, oneof="parameter_choice"),
        _f("uint64_param", 5, _UINT64, oneof="parameter_choice"),
    ],
    "ModelInferRequest": [
        _f("model_name", 1, _STRING), _f("model_version", 2, _STRING), _f("id", 3, _STRING),
        _PARAM_MAP, _f("inputs", 5, _MSG, "InferInputTensor", _REPEATED),
        _f("outputs", 6, _MSG, "InferRequestedOutputTensor", _REPEATED),
        _f("raw_input_contents", 7, _BYTES, label=_REPEATED),
    ],
    "ModelInferRequest.InferInputTensor": [
        _f("name", 1, _STRING), _f("datatype", 2, _STRING), _f("shape", 3, _INT64, label=_REPEATED),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [_f("name", 1, _STRING)],
    "ModelInferResponse": [
        _f("model_name", 1, _STRING), _f("model_version", 2, _STRING), _f("id", 3, _STRING),
        _PARAM_MAP, _f("outputs", 5, _MSG, "InferOutputTensor", _REPEATED),
        _f("raw_output_contents", 6, _BYTES, label=_REPEATED),
    ],
    "ModelInferResponse.InferOutputTensor": [
        _f("name", 1, _STRING), _f("datatype", 2, _STRING), _f("shape", 3, _INT64, label=_REPEATED),
    ],
    "ModelConfigRequest": [_f("name", 1, _STRING), _f("version", 2, _STRING)],
    "ModelConfigResponse": [_f("config", 1, _MSG, "ModelConfig")],
    "ModelConfig": [
        _f("name", 1, _STRING), _f("platform", 2, _STRING), _f("max_batch_size", 4, _INT32),
        _f("dynamic_batching", 11, _MSG, "ModelDynamicBatching"),
        _f("parameters", 14, _MSG, "ModelConfig.ParametersEntry", _REPEATED),
    ],
    "ModelDynamicBatching": [_f("max_queue_delay_microseconds", 2, _UINT64)],
    "ModelParameter": [_f("string_value", 1, _STRING)],
    "RepositoryIndexRequest": [_f("repository_name", 1, _STRING), _f("ready", 2, _BOOL)],
    "RepositoryIndexResponse": [_f("models", 1, _MSG, "ModelIndex", _REPEATED)],
    "RepositoryIndexResponse.ModelIndex": [
        _f("name", 1, _STRING), _f("version", 2, _STRING), _f("state", 3, _STRING),
        _f("reason", 4, _STRING),
    ],
}
# map<string, V> fields: their entry messages, nested in the message that has the map
_ENTRIES: Final[dict[str, str]] = {
    "ModelInferRequest": "InferParameter",
    "ModelInferResponse": "InferParameter",
    "ModelConfig": "ModelParameter",
}


def _field(message: descriptor_pb2.DescriptorProto, spec: _Field, scope: str,
           oneofs: dict[str, int]) -> None:
    name, number, kind, type_name, label, oneof = spec
    field = message.field.add(name=name, number=number, type=kind,
                              label=_F.LABEL_REPEATED if label else _F.LABEL_OPTIONAL)
    if type_name is not None:
        inside = f"{scope}.{type_name}"  # a message nested in this one, or one of the file's
        nested = inside in _DECLARED or type_name == "ParametersEntry"
        field.type_name = f".inference.{inside if nested else type_name}"
    if oneof:
        if oneof not in oneofs:
            oneofs[oneof] = len(message.oneof_decl)
            message.oneof_decl.add(name=oneof)
        field.oneof_index = oneofs[oneof]


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="yoloserve_client_oip.proto",
                                               package="inference", syntax="proto3")
    by_name: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full in _DECLARED:
        outer, _, inner = full.partition(".")
        if inner:
            by_name[full] = by_name[outer].nested_type.add(name=inner)
        else:
            by_name[full] = proto.message_type.add(name=full)
    for outer, value in _ENTRIES.items():
        entry = by_name[outer].nested_type.add(name="ParametersEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=_STRING, label=_F.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=_MSG, label=_F.LABEL_OPTIONAL,
                        type_name=f".inference.{value}")
    for full, fields in _DECLARED.items():
        scope = full.partition(".")[0]
        oneofs: dict[str, int] = {}
        for spec in fields:
            _field(by_name[full], spec, scope, oneofs)
    return proto


def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
            for name in _DECLARED}


MESSAGES: Final[dict[str, Any]] = _classes()
"""Each declared message's class, by its name in the protocol (``ModelInferRequest``,
``ModelInferRequest.InferInputTensor``...)."""
