"""The gRPC client's parts that need no server: its protocol messages against the service's generated
ones, image sizes read from headers, gRPC statuses mapped to the client's errors, and the light
install (``import clients`` loads neither grpcio nor protobuf)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from clients._imagesize import image_size
from clients.errors import (
    ConnectError,
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    ServerError,
    error_from_grpc,
)

pytest.importorskip("grpc")


def test_declared_messages_match_the_published_protocol() -> None:
    from clients._oip_messages import MESSAGES
    from service.api.grpc.proto import grpc_service_pb2, model_config_pb2

    for name, cls in MESSAGES.items():
        outer, _, inner = name.partition(".")
        in_config = outer in ("ModelConfig", "ModelParameter", "ModelDynamicBatching")
        module = model_config_pb2 if in_config else grpc_service_pb2
        theirs = getattr(module, outer).DESCRIPTOR
        if inner:
            theirs = theirs.nested_types_by_name[inner]
        for field in cls.DESCRIPTOR.fields:
            published = theirs.fields_by_name[field.name]
            assert (field.number, field.type, field.label) == (
                published.number, published.type, published.label), f"{name}.{field.name}"
            if field.message_type is not None:
                assert field.message_type.name == published.message_type.name


def test_a_request_reads_back_in_the_services_modules() -> None:
    from clients._oip import infer_request
    from clients._oip_messages import MESSAGES
    from service.api.grpc.proto import grpc_service_pb2 as pb
    from service.api.grpc.tensors import decode_request

    request = infer_request(MESSAGES, "demo", [b"one", b"three"], conf=0.3, iou=None, max_det=7,
                            classes=[0, "circle"], request_id="r1")
    decoded = decode_request(pb.ModelInferRequest.FromString(request.SerializeToString()))
    assert decoded.inputs == {"IMAGE": [b"one", b"three"]}
    assert decoded.parameters == {"conf": 0.3, "max_det": 7, "classes": "0,circle"}
    assert decoded.id == "r1"


def _encoded(fmt: str, size: tuple[int, int], orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    picture = Image.new("RGB", size)
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    picture.save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_image_size_from_the_header(fmt: str) -> None:
    assert image_size(_encoded(fmt, (123, 45))) == (123, 45)


@pytest.mark.parametrize(("orientation", "size"), [(1, (64, 40)), (3, (64, 40)), (6, (40, 64)),
                                                    (8, (40, 64))])
def test_image_size_follows_exif_orientation(orientation: int, size: tuple[int, int]) -> None:
    assert image_size(_encoded("JPEG", (64, 40), orientation)) == size


def test_image_size_of_garbage_is_unknown() -> None:
    assert image_size(b"not an image") is None
    assert image_size(b"\xff\xd8\xff") is None


UNAVAILABLE, DEADLINE, NOT_FOUND, EXHAUSTED, INVALID, INTERNAL = 14, 4, 5, 8, 3, 13


@pytest.mark.parametrize(("status", "trailers", "cls", "code", "http", "retryable"), [
    (NOT_FOUND, {"yoloserve-error-code": "model_not_found"}, InvalidRequest, "model_not_found",
     404, False),
    (INVALID, {"yoloserve-error-code": "invalid_image"}, InvalidRequest, "invalid_image", 400, False),
    (EXHAUSTED, {"yoloserve-error-code": "overloaded", "grpc-retry-pushback-ms": "1500"},
     Overloaded, "overloaded", 503, True),
    (UNAVAILABLE, {"yoloserve-error-code": "draining"}, Overloaded, "draining", 503, True),
    (UNAVAILABLE, {"yoloserve-error-code": "no_healthy_backend"}, ServerError,
     "no_healthy_backend", 502, True),
    (UNAVAILABLE, {}, ConnectError, "unavailable", None, True),
    (DEADLINE, {"yoloserve-error-code": "deadline_exceeded"}, DeadlineExceeded,
     "deadline_exceeded", 504, True),
    (DEADLINE, {}, DeadlineExceeded, "deadline_exceeded", None, False),
    (INTERNAL, {}, ServerError, "internal_error", 500, False),
    (NOT_FOUND, {}, InvalidRequest, "not_found", 404, False),  # a foreign server's status
])
def test_grpc_statuses_map_to_the_http_clients_errors(
        status: int, trailers: dict[str, str], cls: type, code: str, http: int | None,
        retryable: bool) -> None:
    error = error_from_grpc(status, "why", {**trailers, "x-request-id": "srv"}, request_id="mine")
    assert type(error) is cls
    assert (error.code, error.status, error.retryable, error.request_id) == (
        code, http, retryable, "srv")
    if "grpc-retry-pushback-ms" in trailers:
        assert error.retry_after == 1.5


def test_a_tries_own_timeout_with_time_left_is_retried() -> None:
    error = error_from_grpc(DEADLINE, "", {}, request_id="r", timer_retryable=True)
    assert isinstance(error, DeadlineExceeded) and error.retryable and error.code == "timeout"


def test_the_light_install_imports_no_grpc() -> None:
    code = ("import sys, clients; bad = [m for m in ('grpc', 'google.protobuf') if m in sys.modules];"
            " assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_grpcio_the_client_says_what_to_install() -> None:
    code = ("import sys; sys.modules['grpc'] = None\n"
            "from clients import AsyncGrpcDetectionClient\n"
            "try:\n    AsyncGrpcDetectionClient('127.0.0.1:1')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True,
                         text=True).stdout
    assert "pip install 'yoloserve[grpc]'" in out


def _config(name: str, **parameters: str) -> object:
    from clients._oip_messages import MESSAGES

    config = MESSAGES["ModelConfig"](name=name, max_batch_size=8)
    config.dynamic_batching.max_queue_delay_microseconds = 4350
    config.parameters["metadata"].string_value = repr(
        {"task": "detect", "imgsz": [256, 256], "names": {0: "circle", 1: "square"}})
    for key, value in {"version": "abc", "backend": "onnx", "device": "cpu",
                       "precision": "fp32", "letterbox": "square", **parameters}.items():
        config.parameters[key].string_value = value
    return config


def test_model_info_and_the_listing_from_model_configs() -> None:
    from clients._oip import model_info, models_response

    info = model_info(_config("a"))
    assert info.model_dump() == {
        "name": "a", "version": "abc", "backend": "onnx", "device": "cpu", "precision": "fp32",
        "input_size": 256, "task": "detect", "letterbox": "square",
        "classes": {"0": "circle", "1": "square"}, "max_batch_size": 8, "max_wait_ms": 4.35,
        "evaluation": None}
    listing = models_response([_config("a", aliases='{"prod": 3.0}'),
                               _config("b", default="true", aliases='{"prod": 1.0, "x": 2}')])
    assert [m.name for m in listing.models] == ["a", "b"]
    assert listing.default == "b"
    assert listing.aliases == {"prod": {"a": 3.0, "b": 1.0}, "x": {"b": 2.0}}


def test_a_config_without_the_services_parameters_is_a_protocol_error() -> None:
    from clients._oip import model_info
    from clients._oip_messages import MESSAGES
    from clients.errors import ProtocolError

    with pytest.raises(ProtocolError, match="not a yoloserve service"):
        model_info(MESSAGES["ModelConfig"](name="triton-model"))


def test_the_index_lists_served_models_without_their_raw_networks() -> None:
    from clients._oip import served_names
    from clients._oip_messages import MESSAGES

    index = MESSAGES["RepositoryIndexResponse"]()
    for name in ("demo", "seg", "demo-raw", "seg-raw", "other-raw"):
        index.models.add(name=name, state="READY")
    assert served_names(index) == ["demo", "seg", "other-raw"]


async def test_annotate_and_track_without_http_url_say_what_to_pass() -> None:
    from clients import AsyncGrpcDetectionClient, GrpcDetectionClient, HttpRequired

    async with AsyncGrpcDetectionClient("127.0.0.1:1", model="demo") as client:
        assert client.http_url is None
        with pytest.raises(HttpRequired, match=r"http_url='http://HOST:PORT'") as info:
            await client.annotate(b"image")
        assert isinstance(info.value, InvalidRequest) and info.value.code == "http_required"
        with pytest.raises(HttpRequired, match="track"):
            client.track("s1", [b"frame"])  # refused when called, before any frame is read
    with GrpcDetectionClient("127.0.0.1:1", model="demo") as sync, pytest.raises(HttpRequired):
        sync.annotate(b"image")
