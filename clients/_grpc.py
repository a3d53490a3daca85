"""The asynchronous client over gRPC: the Open Inference Protocol's ``ModelInfer`` on the
service's (or the balancer's) ``--grpc-port``, with the HTTP client's methods, errors and retries.

Needs ``grpcio`` and ``protobuf`` (``pip install 'yoloserve[grpc]'``), imported when a client is
made, never when ``clients`` is.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from clients._base import BaseClient, MaskFormat
from clients._images import ArrayFormat, EncodedImage, ImageInput, encode_image
from clients._imagesize import image_size
from clients._oip import Call, Tensors, class_names, classification, detection_results, infer_request
from clients._retry import Backoff, RetryBudget, RetryPolicy, Try
from clients.errors import (
    ClientError,
    ConnectError,
    InvalidRequest,
    ProtocolError,
    error_from_detail,
    error_from_grpc,
)
from wire.headers import REQUEST_ID
from wire.ids import new_request_id
from wire.schemas import ClassificationResult, DetectionResult, ErrorDetail, HealthResponse

__all__ = ["AsyncGrpcDetectionClient"]

USER_AGENT = "yoloserve-client/0.1"
_MESSAGE_LIMIT = 64 * 1024 * 1024  # the service bounds what it takes (max_body_bytes)
# an image's own failure: a batch call that fails so is retried image by image, to answer as /v1
_IMAGE_CODES = frozenset({"invalid_image", "image_dimensions", "payload_too_large"})


def _grpc() -> Any:
    try:
        import grpc
        import grpc.aio
    except ImportError as exc:  # the light install
        raise ImportError("the gRPC client needs grpcio and protobuf: pip install "
                          "'yoloserve[grpc]'") from exc
    return grpc


def _target(url: str) -> tuple[str, str | None]:
    """``grpc://host:port[/model]`` or ``host:port`` -> ``(host:port, model or None)``."""
    if "://" not in url:
        return url, None
    parts = urlsplit(url)
    if parts.scheme != "grpc" or not parts.netloc:
        raise InvalidRequest(f"a gRPC address is grpc://HOST:PORT or HOST:PORT, not {url!r}",
                             code="invalid_url")
    return parts.netloc, parts.path.strip("/") or None


def _item_error(exc: ClientError) -> ClientError:
    """An image's error in a batch, as ``/v1``'s batch answers it: no status of its own."""
    return error_from_detail(ErrorDetail(code=exc.code, message=exc.message,
                                         request_id=exc.request_id))


class AsyncGrpcDetectionClient(BaseClient):
    """An async client of the service's Open Inference Protocol over gRPC (``--grpc-port``).

    ``AsyncDetectionClient``'s twin over gRPC: the same ``detect``, ``detect_batch``, ``classify``,
    ``detect_many``, ``health`` and ``wait_until_ready``, the same exceptions, and the same retries
    (``max_attempts``, full-jitter backoff, at least the server's ``grpc-retry-pushback-ms``, a
    ``retry_budget`` shared by all calls; ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED`` and
    ``DEADLINE_EXCEEDED`` are retried). ``timeout`` is each call's deadline, sent as the gRPC
    deadline of each try (at most ``attempt_timeout``).

    ``url`` is ``HOST:PORT`` or ``grpc://HOST:PORT[/MODEL]``. The protocol names a model in
    every call: ``model`` (or the URL's) is the default, each call's ``model`` overrides it.
    ``max_concurrency`` only sizes the default retry budget: one channel (one HTTP/2
    connection) carries every call. ``sleep``, ``jitter`` and ``clock`` are for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        max_attempts: int = 4,
        model: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 3.0,
        attempt_timeout: float | None = None,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        retry_budget: RetryBudget | None = None,
        max_concurrency: int = 64,
        metadata: Mapping[str, str] | None = None,
        array_format: ArrayFormat = "png",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        grpc = _grpc()
        from clients._oip_messages import MESSAGES, SERVICE

        self.target, url_model = _target(url)
        self.timeout = timeout
        self.model = model or url_model
        self.policy = RetryPolicy(
            max_attempts=max_attempts,
            backoff=Backoff(backoff_base, backoff_max),
            budget=retry_budget or RetryBudget.for_concurrency(max_concurrency),
            sleep=sleep, jitter=jitter, clock=clock)
        self._attempt_timeout = attempt_timeout
        self._connect_timeout = connect_timeout
        self._connectivity = grpc.ChannelConnectivity
        self._array_format = array_format
        self._metadata = list((metadata or {}).items())
        if api_key:
            self._metadata.append(("authorization", f"Bearer {api_key}"))
        self._rpc_error = grpc.aio.AioRpcError
        self._channel = grpc.aio.insecure_channel(self.target, options=[
            ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
            ("grpc.max_send_message_length", _MESSAGE_LIMIT),
            ("grpc.primary_user_agent", USER_AGENT),
            # a broken connection is tried again within a second, not after grpcio's usual
            # backoff (up to 120 s): our retries wait for that attempt (see _connect)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", int(connect_timeout * 1000)),
            ("grpc.max_reconnect_backoff_ms", 1000)])
        self._messages = MESSAGES
        self._calls = {name: self._channel.unary_unary(
            f"/{SERVICE}/{name}", request_serializer=MESSAGES[f"{name}Request"].SerializeToString,
            response_deserializer=MESSAGES[f"{name}Response"].FromString)
            for name in ("ModelInfer", "ServerReady", "ModelConfig")}
        self._names: dict[str, dict[int, str]] = {}  # each model's class names, once

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, {self._state.value})"

    async def _close(self) -> None:
        await self._channel.close()

    # -- detection ---------------------------------------------------------------------------

    async def detect(
        self,
        image: ImageInput,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int | str] | None = None,
        image_name: str | None = None,
        model: str | None = None,
        mask_format: MaskFormat | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline: see the class docstring)
    ) -> DetectionResult:
        """Detect objects in one image, as ``AsyncDetectionClient.detect``.

        A segmenter's masks travel as COCO RLE over the protocol: ``mask_format`` is ``"rle"``
        (the default here) or ``"none"``; ``"polygons"`` is refused."""
        if mask_format == "polygons":
            raise InvalidRequest("over gRPC masks come as COCO RLE: mask_format='rle' or 'none'",
                                 code="validation_error", status=422)
        upload = await self._encode(image, image_name)
        results = await self._detect([upload], conf, iou, max_det, classes, model, mask_format,
                                     timeout)
        return results[0]

    async def detect_batch(
        self,
        images: Sequence[ImageInput],
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int | str] | None = None,
        model: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline: see the class docstring)
    ) -> list[DetectionResult | ClientError]:
        """Detect in several images in one call (one ``IMAGE`` tensor of them all).

        As ``/v1``'s batch, an image the service cannot decode fails only its own entry: the
        protocol fails the whole call then, so its images are sent again one call each."""
        if not images:
            return []
        uploads = list(await asyncio.gather(*(self._encode(image, None) for image in images)))
        args = (conf, iou, max_det, classes, model, None, timeout)
        try:
            return list(await self._detect(uploads, *args))
        except InvalidRequest as exc:
            if exc.code not in _IMAGE_CODES:
                raise
            if len(uploads) == 1:
                return [_item_error(exc)]

        async def alone(upload: EncodedImage) -> DetectionResult | ClientError:
            try:
                return (await self._detect([upload], *args))[0]
            except InvalidRequest as exc:
                if exc.code not in _IMAGE_CODES:
                    raise
                return _item_error(exc)

        return list(await asyncio.gather(*(alone(upload) for upload in uploads)))

    async def classify(
        self,
        image: ImageInput,
        *,
        image_name: str | None = None,
        model: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline: see the class docstring)
    ) -> ClassificationResult:
        """A classifier's five most likely classes for one image, most likely first."""
        upload = await self._encode(image, image_name)
        tensors, call = await self._infer([upload], model, timeout, conf=None, iou=None,
                                          max_det=None, classes=None, mask_format=None)
        return classification(tensors, call)

    # -- health ------------------------------------------------------------------------------

    async def health(self, *, timeout: float | None = None) -> HealthResponse:  # noqa: ASYNC109
        """``ServerReady``, in one try: ``status`` is "ready" or "not_ready"."""
        self._check_open()
        limit = timeout if timeout is not None else self.timeout
        attempt = Try(new_request_id(), 1, limit)
        answer = await self._unary("ServerReady", self._messages["ServerReadyRequest"](), attempt)
        return HealthResponse(status="ready" if answer.ready else "not_ready")

    # -- helpers -----------------------------------------------------------------------------

    async def _encode(self, image: ImageInput, name: str | None) -> EncodedImage:
        self._check_open()
        return await encode_image(image, name=name, array_format=self._array_format)

    async def _detect(self, uploads: list[EncodedImage], conf: float | None, iou: float | None,
                      max_det: int | None, classes: Sequence[int | str] | None,
                      model: str | None, mask_format: MaskFormat | None,
                      deadline_s: float | None) -> list[DetectionResult]:
        tensors, call = await self._infer(uploads, model, deadline_s, conf=conf, iou=iou,
                                          max_det=max_det, classes=classes,
                                          mask_format=mask_format)
        return detection_results(tensors, call)

    async def _infer(self, uploads: list[EncodedImage], model: str | None,
                     call_deadline_s: float | None, *, conf: float | None, iou: float | None,
                     max_det: int | None, classes: Sequence[int | str] | None,
                     mask_format: MaskFormat | None) -> tuple[Tensors, Call]:
        """One ``ModelInfer`` of ``uploads`` with retries; its tensors and what the call knew."""
        self._check_open()
        name = model or self.model
        if not name:
            raise InvalidRequest("the Open Inference Protocol names the model of every call: "
                                 "pass model= to the client or the call", code="validation_error",
                                 status=422)
        deadline_s = call_deadline_s if call_deadline_s is not None else self.timeout
        request_id = new_request_id()
        request = infer_request(self._messages, name, [u.data for u in uploads], conf=conf,
                                iou=iou, max_det=max_det, classes=classes, request_id=request_id)
        started = self.policy.clock()
        response = await self.policy.run(
            request_id, deadline_s, lambda attempt: self._unary("ModelInfer", request, attempt))
        elapsed_ms = (self.policy.clock() - started) * 1000
        tensors = Tensors(response)
        names = await self._class_names(tensors.model or name, deadline_s)
        sizes = [image_size(u.data) for u in uploads]
        if any(size is None for size in sizes):
            raise ProtocolError("the size of an image could not be read from its header (install "
                                "Pillow for formats other than JPEG, PNG, GIF, BMP and WebP)")
        call = Call([u.name for u in uploads], [s for s in sizes if s is not None], conf, iou,
                     names, mask_format, elapsed_ms)
        return tensors, call

    async def _class_names(self, model: str, deadline_s: float) -> dict[int, str]:
        """The model's class names from its ``ModelConfig``, asked once per model."""
        if model not in self._names:
            request = self._messages["ModelConfigRequest"](name=model)
            answer = await self.policy.run(
                new_request_id(), deadline_s,
                lambda attempt: self._unary("ModelConfig", request, attempt))
            self._names[model] = class_names(answer.config)
        return self._names[model]

    async def _unary(self, method: str, request: Any, attempt: Try) -> Any:
        """One try of one call, its failure as a :class:`ClientError`."""
        limit = attempt.remaining
        if self._attempt_timeout is not None:
            limit = min(limit, self._attempt_timeout)
        metadata = (*self._metadata, (REQUEST_ID, attempt.request_id),
                    ("x-attempt", str(attempt.number)))
        if attempt.number > 1:
            await self._connect(min(self._connect_timeout, limit), attempt.request_id)
        try:
            return await self._calls[method](request, timeout=limit, metadata=metadata)
        except self._rpc_error as exc:
            trailers = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
            raise error_from_grpc(exc.code().value[0], exc.details(), trailers,
                                  request_id=attempt.request_id,
                                  timer_retryable=limit < attempt.remaining) from exc

    async def _connect(self, within: float, request_id: str) -> None:
        """Before a retry, as the HTTP client opens a new connection: wait for the channel's
        next connection attempt (at most ``within`` s). A retry would otherwise fail at once while
        grpcio waits out its reconnect backoff, however soon the server is back."""
        ready, failed = self._connectivity.READY, self._connectivity.TRANSIENT_FAILURE
        tried = False
        try:
            async with asyncio.timeout(within):
                state = self._channel.get_state(try_to_connect=True)
                while state is not ready:
                    if state is failed and tried:
                        raise ConnectError(f"no connection to {self.target}",
                                           code="connect_failed", request_id=request_id,
                                           retryable=True)
                    tried = tried or state is self._connectivity.CONNECTING
                    await self._channel.wait_for_state_change(state)
                    state = self._channel.get_state(try_to_connect=True)
        except TimeoutError as exc:
            raise ConnectError(f"no connection to {self.target} within {within:.3g}s",
                               code="connect_timeout", request_id=request_id,
                               retryable=True) from exc
