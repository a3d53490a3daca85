"""The error hierarchy and the one place answers and httpx errors become it."""

from __future__ import annotations

import httpx
import pytest
from conftest import error_payload

from clients import (
    ClientError,
    ConnectError,
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    ProtocolError,
    RateLimited,
    ServerError,
    Unauthorized,
)
from clients.errors import error_from_detail, error_from_response, error_from_transport
from wire.schemas import ErrorDetail

REQUEST = httpx.Request("POST", "http://x/v1/detect")


def answer(status: int, content: bytes = b"", **headers: str) -> httpx.Response:
    return httpx.Response(status, content=content, headers=headers, request=REQUEST)


def test_the_tree() -> None:
    assert issubclass(Unauthorized, InvalidRequest)
    assert issubclass(RateLimited, Overloaded)
    for cls in (InvalidRequest, Overloaded, ServerError, DeadlineExceeded, ConnectError):
        assert issubclass(cls, ClientError)
    assert issubclass(ProtocolError, ClientError)


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, InvalidRequest, False),
        (401, Unauthorized, False),
        (403, Unauthorized, False),
        (404, InvalidRequest, False),
        (413, InvalidRequest, False),
        (415, InvalidRequest, False),
        (422, InvalidRequest, False),
        (429, RateLimited, True),
        (500, ServerError, False),
        (501, ServerError, False),
        (502, ServerError, True),
        (503, Overloaded, True),
        (504, DeadlineExceeded, True),
        (302, ProtocolError, False),
    ],
)
def test_status_to_class(status: int, cls: type[ClientError], retryable: bool) -> None:
    error = error_from_response(
        answer(status, error_payload("some_code", "why", "srv-9")), request_id="mine"
    )
    assert type(error) is cls
    assert error.status == status
    assert error.code == "some_code"
    assert error.message == "why"
    assert error.request_id == "srv-9"
    assert error.retryable is retryable


def test_body_without_request_id_falls_back_to_header_then_ours() -> None:
    body = error_payload("invalid_image", request_id=None)
    from_header = error_from_response(answer(400, body, **{"X-Request-ID": "hdr"}), request_id="x")
    assert from_header.request_id == "hdr"
    assert error_from_response(answer(400, body), request_id="ours").request_id == "ours"


def test_non_json_body_keeps_status_and_text() -> None:
    error = error_from_response(answer(502, b"<html>bad gateway</html>"), request_id="r1")
    assert isinstance(error, ServerError)
    assert error.code == "http_502"
    assert "bad gateway" in error.message
    assert error.request_id == "r1"
    assert error.retryable
    empty = error_from_response(answer(503, b"", **{"Retry-After": "1"}), request_id=None)
    assert empty.message == "Service Unavailable"
    assert isinstance(empty, Overloaded)


def test_retry_after_is_kept() -> None:
    error = error_from_response(
        answer(429, error_payload("rate_limited")), request_id=None, retry_after=3.0
    )
    assert error.retry_after == 3.0


def test_str_and_dict() -> None:
    error = InvalidRequest("bad image", status=400, code="invalid_image", request_id="abc")
    assert str(error) == "bad image (invalid_image, HTTP 400, request abc)"
    assert error.to_dict() == {
        "code": "invalid_image",
        "message": "bad image",
        "status": 400,
        "request_id": "abc",
    }
    assert str(ConnectError("refused")) == "refused (connect_failed)"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("invalid_image", InvalidRequest),
        ("payload_too_large", InvalidRequest),
        ("unauthorized", Unauthorized),
        ("rate_limited", RateLimited),
        ("overloaded", Overloaded),
        ("draining", Overloaded),
        ("deadline_exceeded", DeadlineExceeded),
        ("something_new", ServerError),
    ],
)
def test_batch_item_errors_by_code(code: str, cls: type[ClientError]) -> None:
    error = error_from_detail(ErrorDetail(code=code, message="m", request_id="r"))
    assert type(error) is cls
    assert (error.code, error.request_id, error.status) == (code, "r", None)
    assert not error.retryable


def test_detail_with_status_uses_status() -> None:
    error = error_from_detail(ErrorDetail(code="x", message="m"), status=503)
    assert isinstance(error, Overloaded)


@pytest.mark.parametrize(
    ("exc", "cls", "code", "retryable"),
    [
        (httpx.ConnectError("refused"), ConnectError, "connect_failed", True),
        (httpx.ConnectTimeout("slow"), ConnectError, "connect_timeout", True),
        (httpx.ReadTimeout("slow"), DeadlineExceeded, "timeout", True),
        (httpx.WriteTimeout("slow"), DeadlineExceeded, "timeout", True),
        (httpx.PoolTimeout("full"), DeadlineExceeded, "timeout", True),
        (httpx.ReadError("reset"), ConnectError, "connection_lost", True),
        (httpx.RemoteProtocolError("gone"), ConnectError, "connection_lost", True),
        (httpx.UnsupportedProtocol("ftp"), InvalidRequest, "invalid_url", False),
        (httpx.InvalidURL("bad"), InvalidRequest, "invalid_url", False),
        (httpx.DecodingError("gzip"), ProtocolError, "protocol_error", False),
        (httpx.TooManyRedirects("loop"), ProtocolError, "protocol_error", False),
    ],
)
def test_transport_errors(
    exc: httpx.HTTPError, cls: type[ClientError], code: str, retryable: bool
) -> None:
    error = error_from_transport(exc, request_id="r")
    assert type(error) is cls
    assert (error.code, error.retryable, error.request_id, error.status) == (
        code,
        retryable,
        "r",
        None,
    )


def test_transport_error_without_text_is_named() -> None:
    assert error_from_transport(httpx.ConnectError(""), request_id=None).message == "ConnectError"
