"""The asynchronous client over gRPC: the Open Inference Protocol's ``ModelInfer``,
``ModelConfig`` and ``RepositoryIndex`` on the service's (or the balancer's) ``--grpc-port``, with
the HTTP client's methods, errors and retries. ``annotate`` and ``track``, which the protocol has
no call for, go to the same service's HTTP API when the client is given its address.

Needs ``grpcio`` and ``protobuf`` (``pip install 'yoloserve[grpc]'``), imported when a client is
made, never when ``clients`` is.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypedDict
from urllib.parse import urlsplit

from clients._base import BaseClient, MaskFormat
from clients._client import AsyncDetectionClient
from clients._grpc_channel import GrpcChannel
from clients._images import ArrayFormat, EncodedImage, ImageInput, encode_image
from clients._imagesize import image_size
from clients._oip import (
    Call,
    Tensors,
    class_names,
    classification,
    detection_results,
    infer_request,
    model_info,
    models_response,
    served_names,
)
from clients._retry import Backoff, RetryBudget, RetryPolicy, Try
from clients._track import FrameSource, LostFrame, TrackerValue
from clients.errors import (
    ClientError,
    HttpRequired,
    InvalidRequest,
    ProtocolError,
    error_from_detail,
)
from wire.ids import new_request_id
from wire.schemas import (
    ClassificationResult,
    DetectionResult,
    ErrorDetail,
    HealthResponse,
    ModelInfo,
    ModelsResponse,
    StreamResult,
)

__all__ = ["AsyncGrpcDetectionClient", "GrpcClientOptions"]

# an image's own failure: a batch call that fails so is retried image by image, to answer as /v1
_IMAGE_CODES = frozenset({"invalid_image", "image_dimensions", "payload_too_large"})


def _target(url: str) -> tuple[str, str | None]:
    """``grpc://host:port[/model]`` or ``host:port`` -> ``(host:port, model or None)``."""
    if "://" not in url:
        return url, None
    parts = urlsplit(url)
    if parts.scheme != "grpc" or not parts.netloc:
        raise InvalidRequest(f"a gRPC address is grpc://HOST:PORT or HOST:PORT, not {url!r}",
                             code="invalid_url")
    return parts.netloc, parts.path.strip("/") or None


class GrpcClientOptions(TypedDict, total=False):
    """The keyword arguments of :class:`AsyncGrpcDetectionClient` (and so of
    ``GrpcDetectionClient``)."""

    timeout: float
    max_attempts: int
    model: str | None
    api_key: str | None
    connect_timeout: float
    attempt_timeout: float | None
    backoff_base: float
    backoff_max: float
    retry_budget: RetryBudget | None
    max_concurrency: int
    metadata: Mapping[str, str] | None
    array_format: ArrayFormat
    http_url: str | None
    sleep: Callable[[float], Awaitable[None]]
    jitter: Callable[[], float]
    clock: Callable[[], float]


def _item_error(exc: ClientError) -> ClientError:
    """An image's error in a batch, as ``/v1``'s batch answers it: no status of its own."""
    return error_from_detail(ErrorDetail(code=exc.code, message=exc.message,
                                         request_id=exc.request_id))


class AsyncGrpcDetectionClient(BaseClient):
    """An async client of the service's Open Inference Protocol over gRPC (``--grpc-port``).

    ``AsyncDetectionClient``'s twin over gRPC: the same ``detect``, ``detect_batch``, ``classify``,
    ``detect_many``, ``model_info``, ``list_models``, ``health`` and ``wait_until_ready``, the
    same exceptions, and the same retries (``max_attempts``, full-jitter backoff, at least the
    server's ``grpc-retry-pushback-ms``, a ``retry_budget`` shared by all calls; ``UNAVAILABLE``,
    ``RESOURCE_EXHAUSTED`` and ``DEADLINE_EXCEEDED`` are retried). ``timeout`` is each call's
    deadline, sent as the gRPC deadline of each try (at most ``attempt_timeout``).

    ``url`` is ``HOST:PORT`` or ``grpc://HOST:PORT[/MODEL]``. The protocol names a model in
    every inference: ``model`` (or the URL's) is the default, each call's ``model`` overrides it.
    ``max_concurrency`` only sizes the default retry budget: one channel (one HTTP/2
    connection) carries every call. ``sleep``, ``jitter`` and ``clock`` are for tests.

    ``annotate`` and ``track`` are not in the protocol: with ``http_url`` (the same service's or
    balancer's HTTP address) they go there, through an :class:`AsyncDetectionClient` made with
    this client's settings that shares its retry budget; without it they raise
    :class:`~clients.errors.HttpRequired`.
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
        http_url: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target, url_model = _target(url)
        self.timeout = timeout
        self.model = model or url_model
        self.policy = RetryPolicy(
            max_attempts=max_attempts,
            backoff=Backoff(backoff_base, backoff_max),
            budget=retry_budget or RetryBudget.for_concurrency(max_concurrency),
            sleep=sleep, jitter=jitter, clock=clock)
        self._array_format = array_format
        self._channel = GrpcChannel(self.target, connect_timeout=connect_timeout,
                                    attempt_timeout=attempt_timeout, metadata=metadata,
                                    api_key=api_key)
        self._messages = self._channel.messages
        self._names: dict[str, dict[int, str]] = {}  # each model's class names, once
        # annotate and track: the same service over HTTP, with the same settings and budget
        self._http = None if http_url is None else AsyncDetectionClient(
            http_url, timeout=timeout, max_attempts=max_attempts, model=self.model,
            api_key=api_key, connect_timeout=connect_timeout, attempt_timeout=attempt_timeout,
            backoff_base=backoff_base, backoff_max=backoff_max, retry_budget=self.policy.budget,
            max_connections=max_concurrency, headers=metadata, array_format=array_format,
            sleep=sleep, jitter=jitter, clock=clock)

    @property
    def http_url(self) -> str | None:
        """The HTTP address ``annotate`` and ``track`` use, if the client was given one."""
        return None if self._http is None else self._http.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, {self._state.value})"

    async def _close(self) -> None:
        try:
            await self._channel.close()
        finally:
            if self._http is not None:
                await self._http.aclose()

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

    # -- over HTTP: not in the protocol -------------------------------------------------------

    async def annotate(
        self,
        image: ImageInput,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int | str] | None = None,
        image_name: str | None = None,
        model: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline: see the class docstring)
    ) -> bytes:
        """The image as JPEG bytes with the boxes and labels drawn, as
        ``AsyncDetectionClient.annotate``: over HTTP (``http_url``), the protocol has no such call."""
        http = self._over_http("annotate")
        return await http.annotate(image, conf=conf, iou=iou, max_det=max_det, classes=classes,
                                   image_name=image_name, model=model or self.model,
                                   timeout=timeout)

    def track(
        self,
        stream_id: str,
        frames: FrameSource,
        *,
        first_seq: int = 0,
        rate: float | None = None,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int | str] | None = None,
        tracker: str | None = None,
        tracker_options: Mapping[str, TrackerValue] | None = None,
        on_lost: Callable[[LostFrame], None] | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult, None]:
        """Track objects through a video stream, as ``AsyncDetectionClient.track``: over HTTP
        (``http_url``), the streams API, which the protocol has no call for."""
        http = self._over_http("track")
        return http.track(stream_id, frames, first_seq=first_seq, rate=rate, conf=conf, iou=iou,
                          max_det=max_det, classes=classes, tracker=tracker,
                          tracker_options=tracker_options, on_lost=on_lost, timeout=timeout)

    def _over_http(self, method: str) -> AsyncDetectionClient:
        self._check_open()
        if self._http is None:
            raise HttpRequired(
                f"{method}() is not in the Open Inference Protocol: it goes over HTTP; give the "
                "client the same service's HTTP address: AsyncGrpcDetectionClient(..., "
                "http_url='http://HOST:PORT')")
        return self._http

    # -- models ------------------------------------------------------------------------------

    async def model_info(self, *, model: str | None = None,
                         timeout: float | None = None) -> ModelInfo:  # noqa: ASYNC109
        """A served model, as ``/v1/model``: from its ``ModelConfig``. With no model named
        (here or on the client), the service's default model, the first of its index."""
        self._check_open()
        deadline = self._deadline(timeout)
        name = model or self.model or (await self._served(deadline))[0]
        return model_info(await self._config(name, deadline))

    async def list_models(self, *, timeout: float | None = None) -> ModelsResponse:  # noqa: ASYNC109
        """Every model the service serves, its default and its aliases, as ``/v1/models``: the
        ``RepositoryIndex``, then each model's ``ModelConfig``."""
        self._check_open()
        deadline = self._deadline(timeout)
        names = await self._served(deadline)
        return models_response(await asyncio.gather(*(self._config(n, deadline) for n in names)))

    # -- health ------------------------------------------------------------------------------

    async def health(self, *, timeout: float | None = None) -> HealthResponse:  # noqa: ASYNC109
        """``ServerReady``, in one try: ``status`` is "ready" or "not_ready"."""
        self._check_open()
        limit = timeout if timeout is not None else self.timeout
        attempt = Try(new_request_id(), 1, limit)
        request = self._messages["ServerReadyRequest"]()
        answer = await self._channel.unary("ServerReady", request, attempt)
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
        started = self.policy.clock()
        deadline = self._deadline(call_deadline_s)
        request_id = new_request_id()
        request = infer_request(self._messages, name, [u.data for u in uploads], conf=conf,
                                iou=iou, max_det=max_det, classes=classes, request_id=request_id)
        response = await self._call("ModelInfer", request, deadline, request_id)
        elapsed_ms = (self.policy.clock() - started) * 1000
        tensors = Tensors(response)
        names = await self._class_names(tensors.model or name, deadline)
        sizes = [image_size(u.data) for u in uploads]
        if any(size is None for size in sizes):
            raise ProtocolError("the size of an image could not be read from its header (install "
                                "Pillow for formats other than JPEG, PNG, GIF, BMP and WebP)")
        call = Call([u.name for u in uploads], [s for s in sizes if s is not None], conf, iou,
                     names, mask_format, elapsed_ms)
        return tensors, call

    async def _class_names(self, model: str, deadline: float) -> dict[int, str]:
        """The model's class names from its ``ModelConfig``, asked once per model."""
        if model not in self._names:
            self._names[model] = class_names(await self._config(model, deadline))
        return self._names[model]

    def _deadline(self, timeout: float | None) -> float:
        """When a call (and whatever it asks besides) must end, on the policy's clock."""
        return self.policy.clock() + (timeout if timeout is not None else self.timeout)

    async def _call(self, method: str, request: Any, deadline: float,
                    request_id: str | None = None) -> Any:
        """One call of the protocol, retried as the policy says, by ``deadline``."""
        return await self.policy.run(
            request_id or new_request_id(), deadline - self.policy.clock(),
            lambda attempt: self._channel.unary(method, request, attempt))

    async def _config(self, model: str, deadline: float) -> Any:
        """The model's ``ModelConfig``."""
        request = self._messages["ModelConfigRequest"](name=model)
        return (await self._call("ModelConfig", request, deadline)).config

    async def _served(self, deadline: float) -> list[str]:
        """The models the service serves, as ``/v1/models`` lists them (the default first)."""
        request = self._messages["RepositoryIndexRequest"](ready=True)
        names = served_names(await self._call("RepositoryIndex", request, deadline))
        if not names:
            raise ProtocolError("the service's RepositoryIndex lists no models")
        return names
