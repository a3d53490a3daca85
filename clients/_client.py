"""The asynchronous client: typed calls to the detection service, retried the right way."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from typing import TypedDict, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from clients._base import BaseClient, DetectOptions, MaskFormat
from clients._http import RequestSpec, Sender, parse_answer
from clients._images import ArrayFormat, EncodedImage, ImageInput, encode_image
from clients._retry import Backoff, RetryBudget, RetryPolicy
from clients._track import (
    FrameSource,
    LostFrame,
    TrackerValue,
    TrackRequest,
    track_fields,
    track_stream,
)
from clients.errors import (
    ClientError,
    ProtocolError,
    error_from_detail,
    error_from_response,
    error_from_transport,
)
from wire.schemas import (
    BatchItemError,
    BatchResponse,
    ClassificationResult,
    DetectionResult,
    HealthResponse,
    ModelInfo,
    ModelsResponse,
    StreamResult,
)

__all__ = ["AsyncDetectionClient", "ClientOptions", "DetectOptions"]

M = TypeVar("M", bound=BaseModel)
USER_AGENT = "yoloserve-client/0.1"


class ClientOptions(TypedDict, total=False):
    """The keyword arguments of :class:`AsyncDetectionClient` (and so of ``DetectionClient``)."""

    timeout: float
    max_attempts: int
    model: str | None
    api_key: str | None
    connect_timeout: float
    attempt_timeout: float | None
    backoff_base: float
    backoff_max: float
    retry_budget: RetryBudget | None
    max_connections: int
    max_keepalive_connections: int
    headers: Mapping[str, str] | None
    array_format: ArrayFormat
    transport: httpx.AsyncBaseTransport | None
    sleep: Callable[[float], Awaitable[None]]
    jitter: Callable[[], float]
    clock: Callable[[], float]


class AsyncDetectionClient(BaseClient):
    """An async client of the yoloserve HTTP API.

    ``timeout`` is each call's deadline, all its tries and waits included; ``attempt_timeout``
    optionally bounds one try. Failures that may pass (connection errors, timeouts, 429, 502,
    503, 504) are retried up to ``max_attempts`` tries with full-jitter backoff (``backoff_base``
    doubling up to ``backoff_max``, at least the server's ``Retry-After``), while the
    ``retry_budget`` shared by all calls allows (by default one sized to ``max_connections``
    calls in flight: :meth:`RetryBudget.for_concurrency`). ``transport``, ``sleep``, ``jitter``
    and ``clock`` are for tests.

    ``model`` names one of the service's models (or an alias) for every call, and each call's
    ``model`` overrides it; None addresses the service's default model.

    Every method's ``timeout`` overrides the client's for that call. It is a deadline, not only a
    wrapper: it bounds the retries and is sent to the service as ``X-Request-Timeout-Ms``.
    """

    def __init__(
        self,
        base_url: str,
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
        max_connections: int = 64,
        max_keepalive_connections: int = 16,
        headers: Mapping[str, str] | None = None,
        array_format: ArrayFormat = "png",
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self.model = model
        self.policy = RetryPolicy(
            max_attempts=max_attempts,
            backoff=Backoff(backoff_base, backoff_max),
            budget=(
                retry_budget
                if retry_budget is not None
                else RetryBudget.for_concurrency(max_connections)
            ),
            sleep=sleep,
            jitter=jitter,
            clock=clock,
        )
        self._array_format = array_format
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_default_headers(api_key, headers),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive_connections,
            ),
            transport=transport,
        )
        self._sender = Sender(
            self._http,
            self.policy,
            connect_timeout=connect_timeout,
            attempt_timeout=attempt_timeout,
        )

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, {self._state.value})"

    async def _close(self) -> None:
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
        """Detect objects in one image (a path, encoded bytes, or a uint8 BGR numpy array).

        A segmenter's detections carry ``mask`` (polygons, or COCO RLE with
        ``mask_format="rle"``), a pose model's ``keypoints``, an oriented-box model's
        ``rotated_box`` and ``polygon``. A classifier answers ``classify``, not this
        (``InvalidRequest`` with code ``wrong_task``)."""
        upload = await self._encode(image, image_name)
        form = _form(conf, iou, max_det, classes)
        if mask_format is not None:
            form["mask_format"] = mask_format
        spec = RequestSpec("POST", self._route("/detect", model), [("image", upload.as_file())],
                           form)
        return parse_answer(DetectionResult, await self._send(spec, timeout))

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
        spec = RequestSpec("POST", self._route("/classify", model), [("image", upload.as_file())],
                           {})
        return parse_answer(ClassificationResult, await self._send(spec, timeout))

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
        """The image as JPEG bytes with the detected boxes and labels drawn on it."""
        upload = await self._encode(image, image_name)
        form = _form(conf, iou, max_det, classes)
        spec = RequestSpec("POST", self._route("/annotate", model), [("image", upload.as_file())],
                           form)
        return (await self._send(spec, timeout)).content

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
        """Detect in several images (the service takes up to 64) in one request.

        An image the service cannot decode fails only its own entry, returned as a
        :class:`ClientError` in its place; a path that cannot be read raises before sending.
        """
        if not images:
            return []
        uploads = await asyncio.gather(*(self._encode(image, None) for image in images))
        files = [("images", upload.as_file()) for upload in uploads]
        spec = RequestSpec("POST", self._route("/detect/batch", model), files,
                           _form(conf, iou, max_det, classes))
        batch = parse_answer(BatchResponse, await self._send(spec, timeout))
        if len(batch.results) != len(images):
            raise ProtocolError(f"{len(images)} images sent, {len(batch.results)} results received")
        return [
            error_from_detail(item.error) if isinstance(item, BatchItemError) else item
            for item in batch.results
        ]

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
        """Track objects through a video stream: each frame's :class:`StreamResult`, in order.

        ``frames`` is a video file's path (read lazily with OpenCV, frames sent as JPEG with their
        time) or an iterable, possibly async, of images (paths, bytes, numpy BGR arrays). Frame
        ``i`` is sent as ``seq = first_seq + i``, one at a time (the next read meanwhile), at most
        ``rate`` frames per second when given. ``tracker`` (``bytetrack``, ``botsort``) and
        ``tracker_options`` (Ultralytics' tracker settings by name, e.g. ``track_high_thresh``)
        are taken by the service when the stream starts. ``timeout`` is each frame's deadline.

        Retries keep the frame's ``seq``. A retried frame answered 409 ``stale_frame`` was
        processed by an earlier try whose answer was lost: it is skipped (reported to ``on_lost``
        as a :class:`LostFrame`) and the stream goes on; any other error is raised.
        """
        self._check_open()
        request = TrackRequest(
            stream_id,
            first_seq,
            rate,
            track_fields(
                conf=conf,
                iou=iou,
                max_det=max_det,
                classes=classes,
                tracker=tracker,
                tracker_options=tracker_options,
            ),
            timeout,
            on_lost,
        )
        return track_stream(
            request, frames, self._encode, self._send, self.policy.clock, self.policy.sleep
        )

    # -- model and health --------------------------------------------------------------------

    async def model_info(self, *, model: str | None = None,
                         timeout: float | None = None) -> ModelInfo:  # noqa: ASYNC109
        """The served model: name, version, backend, device, classes, batching settings."""
        model = model or self.model
        path = "/v1/model" if model is None else f"/v1/models/{quote(model, safe='')}"
        return parse_answer(ModelInfo, await self._send(RequestSpec("GET", path), timeout))

    async def list_models(self, *, timeout: float | None = None) -> ModelsResponse:  # noqa: ASYNC109
        """Every model the service serves, its default and its aliases."""
        return parse_answer(ModelsResponse, await self._send(RequestSpec("GET", "/v1/models"), timeout))

    async def health(self, *, timeout: float | None = None) -> HealthResponse:  # noqa: ASYNC109
        """The readiness probe, in one try: ``status`` is "ready", or why not ("starting"...)."""
        self._check_open()
        request = self._http.build_request(
            "GET", "/health/ready", timeout=timeout if timeout is not None else self.timeout
        )
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, request_id=None) from exc
        if response.status_code in (200, 503):
            try:
                return HealthResponse.model_validate_json(response.content)
            except ValidationError:
                pass  # not a health body: a proxy's error answer
        if response.is_success:
            raise ProtocolError("the readiness answer is not a health body", status=200)
        raise error_from_response(response, request_id=None)

    # -- helpers -----------------------------------------------------------------------------

    def _route(self, route: str, model: str | None) -> str:
        """``/v1{route}`` of the default model, or ``/v1/models/{model}{route}``."""
        model = model or self.model
        return f"/v1{route}" if model is None else f"/v1/models/{quote(model, safe='')}{route}"

    async def _encode(self, image: ImageInput, name: str | None) -> EncodedImage:
        self._check_open()
        return await encode_image(image, name=name, array_format=self._array_format)

    async def _send(self, spec: RequestSpec, deadline_s: float | None) -> httpx.Response:
        self._check_open()
        deadline_s = deadline_s if deadline_s is not None else self.timeout
        return await self._sender.send(spec, deadline_s=deadline_s)


def _default_headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    headers.update(extra or {})
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _form(
    conf: float | None, iou: float | None, max_det: int | None, classes: Sequence[int | str] | None
) -> dict[str, str]:
    """The detection parameters as form fields; ``classes`` as one comma-separated field."""
    form = {"conf": conf, "iou": iou, "max_det": max_det}
    fields = {key: str(value) for key, value in form.items() if value is not None}
    if classes is not None:
        fields["classes"] = ",".join(str(c) for c in classes)
    return fields
