"""The synchronous client: the async one, run on an event loop in a thread of its own through
anyio's blocking portal.

Each public method is the async method wrapped once by :func:`_blocking` (or :func:`_blocking_iter`
for ``detect_many`` and ``track``), so the two clients cannot drift apart. It works from plain
scripts and from code that already runs an event loop (a notebook), since the portal's loop never
is the caller's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar, Unpack

from anyio.from_thread import BlockingPortal, start_blocking_portal

from clients._client import AsyncDetectionClient, ClientOptions

__all__ = ["DetectionClient"]

P = ParamSpec("P")
T = TypeVar("T")


class _Portal:
    """A blocking portal (an event loop on a thread of its own) until :meth:`close`."""

    def __init__(self) -> None:
        self._manager: AbstractContextManager[BlockingPortal] = start_blocking_portal("asyncio")
        self._portal: BlockingPortal | None = self._manager.__enter__()

    @property
    def closed(self) -> bool:
        return self._portal is None

    def run(self, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run ``fn(*args)`` on the portal's loop and wait for it; an interrupt here cancels it
        there."""
        if self._portal is None:
            raise RuntimeError("the client is closed")
        future = self._portal.start_task_soon(fn, *args)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # a KeyboardInterrupt while waiting: stop the work, too
            raise

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and join its thread; idempotent.

        Work is cancelled rather than awaited: a call interrupted while it was still being handed
        over (a Ctrl-C then) has no future to cancel, and waiting for it could last forever.
        """
        portal, self._portal = self._portal, None
        if portal is None:
            return
        try:
            portal.call(portal.stop, True)
        finally:
            self._manager.__exit__(None, None, None)


def _blocking(
    method: Callable[Concatenate[AsyncDetectionClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[DetectionClient, P], T]:
    """The blocking twin of one ``AsyncDetectionClient`` coroutine method."""

    def call(self: DetectionClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._loop.run(lambda: method(self._client, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


def _blocking_iter(
    method: Callable[Concatenate[AsyncDetectionClient, P], AsyncGenerator[T, None]],
) -> Callable[Concatenate[DetectionClient, P], Generator[T, None, None]]:
    """The iterator twin of one ``AsyncDetectionClient`` async generator method."""

    def call(
        self: DetectionClient, /, *args: P.args, **kwargs: P.kwargs
    ) -> Generator[T, None, None]:
        return self._iterate(method(self._client, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class _End:
    pass


async def _next(agen: AsyncGenerator[T, None]) -> T | _End:
    return await anext(agen, _End())


class DetectionClient:
    """The synchronous :class:`AsyncDetectionClient`: same arguments, same methods, blocking.

    Use it as a context manager or call :meth:`close`. ``detect_many`` and ``track`` return
    iterators; their callbacks (``on_progress``, ``on_lost``) run on the client's thread and must
    not call the client. Close such a generator you leave early (``contextlib.closing``) to cancel
    its work at once.
    """

    def __init__(self, base_url: str, **options: Unpack[ClientOptions]) -> None:
        self._loop = _Portal()
        try:
            self._client = self._loop.run(_open, base_url, options)
        except BaseException:
            self._loop.close()
            raise

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def async_client(self) -> AsyncDetectionClient:
        """The wrapped async client (its retry budget, its policy)."""
        return self._client

    def close(self) -> None:
        """Close the connection pool and stop the client's thread; idempotent."""
        if self._loop.closed:
            return
        try:
            self._loop.run(self._client.aclose)
        finally:
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _iterate(self, agen: AsyncGenerator[T, None]) -> Generator[T, None, None]:
        try:
            while not isinstance(item := self._loop.run(_next, agen), _End):
                yield item
        finally:
            if not self._loop.closed:
                self._loop.run(agen.aclose)

    detect = _blocking(AsyncDetectionClient.detect)
    classify = _blocking(AsyncDetectionClient.classify)
    annotate = _blocking(AsyncDetectionClient.annotate)
    detect_batch = _blocking(AsyncDetectionClient.detect_batch)
    detect_many = _blocking_iter(AsyncDetectionClient.detect_many)
    track = _blocking_iter(AsyncDetectionClient.track)
    model_info = _blocking(AsyncDetectionClient.model_info)
    list_models = _blocking(AsyncDetectionClient.list_models)
    health = _blocking(AsyncDetectionClient.health)
    wait_until_ready = _blocking(AsyncDetectionClient.wait_until_ready)


async def _open(base_url: str, options: ClientOptions) -> AsyncDetectionClient:
    return AsyncDetectionClient(base_url, **options)
