"""What the HTTP client and the gRPC client share, written once: the lifecycle (``async with``,
``aclose``), ``detect_many`` (a window of ``detect`` calls) and ``wait_until_ready`` (a poll of
``health``). Each client adds its transport and its calls."""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Literal, Self, TypedDict, Unpack

from clients._images import ImageInput
from clients._many import ItemError, ItemResult, Progress, bounded_map
from clients._retry import RetryBudget, RetryPolicy
from clients.errors import ClientError, DeadlineExceeded, InvalidRequest
from wire.schemas import DetectionResult, HealthResponse

__all__ = ["BaseClient", "DetectOptions", "MaskFormat"]

MaskFormat = Literal["polygons", "rle", "none"]


class DetectOptions(TypedDict, total=False):
    """The detection parameters ``detect_many`` passes on to each ``detect``."""

    conf: float | None
    iou: float | None
    max_det: int | None
    classes: Sequence[int | str] | None
    model: str | None
    timeout: float | None


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class BaseClient:
    """A client's lifecycle and the calls made of its others; subclasses set ``policy`` and
    implement ``detect``, ``health`` and ``_close``."""

    policy: RetryPolicy
    timeout: float  # each call's deadline unless the call gives its own
    _state: _State = _State.OPEN

    @property
    def retry_budget(self) -> RetryBudget:
        """The token bucket shared by this client's calls."""
        return self.policy.budget

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
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> DetectionResult:
        raise NotImplementedError

    async def health(self, *, timeout: float | None = None) -> HealthResponse:  # noqa: ASYNC109
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; idempotent. Calls after this raise ``RuntimeError``."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._close()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("the client is closed")

    # -- made of the others ------------------------------------------------------------------

    async def detect_many(
        self,
        items: Iterable[ImageInput] | AsyncIterable[ImageInput],
        *,
        concurrency: int = 16,
        ordered: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        **options: Unpack[DetectOptions],
    ) -> AsyncGenerator[ItemResult | ItemError, None]:
        """Detect in each image of a (possibly endless, possibly async) stream, a window at a time.

        At most ``concurrency`` images are read, sent or awaited at once.

        Yields an :class:`ItemResult` or an :class:`ItemError` per input, as they finish (or in
        input order when ``ordered``). Read lazily; stop early with ``contextlib.aclosing``.
        """
        self._check_open()
        clock = self.policy.clock
        started = clock()
        completed = failed = 0

        async def one(index: int, image: ImageInput) -> ItemResult | ItemError:
            begin = clock()
            try:
                result = await self.detect(image, **options)
            except ClientError as exc:
                return ItemError(index, image, exc, clock() - begin)
            return ItemResult(index, image, result, clock() - begin)

        window = bounded_map(items, one, concurrency=concurrency, ordered=ordered)
        async with aclosing(window):  # closing this generator closes the window at once
            async for outcome in window:
                completed += 1
                failed += not outcome.ok
                if on_progress is not None:
                    on_progress(Progress(completed, failed, clock() - started))
                yield outcome

    async def wait_until_ready(self, timeout: float = 60.0) -> HealthResponse:  # noqa: ASYNC109
        """Poll the readiness probe until the service says "ready"; raise after ``timeout`` s.

        Connection errors and 503s mean "not yet"; other errors (a 401, a 404) are raised at once.
        """
        clock, policy = self.policy.clock, self.policy
        deadline = clock() + timeout
        delay = 0.05
        last: str = "no answer yet"
        while True:
            remaining = deadline - clock()
            try:
                health = await self.health(timeout=max(0.001, min(self.timeout, remaining)))
            except InvalidRequest:
                raise
            except ClientError as exc:
                last = str(exc)
            else:
                if health.status == "ready":
                    return health
                last = f"status {health.status!r}"
            remaining = deadline - clock()
            if remaining <= 0:
                raise DeadlineExceeded(f"not ready after {timeout:g}s: {last}", code="not_ready")
            await policy.sleep(min(delay * (0.5 + policy.jitter() / 2), remaining))
            delay = min(delay * 2, 1.0)
