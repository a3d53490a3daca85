"""The synchronous clients: the async ones, each run on an event loop in a thread of its own
through anyio's blocking portal. ``DetectionClient`` wraps :class:`AsyncDetectionClient` (HTTP),
``GrpcDetectionClient`` wraps :class:`AsyncGrpcDetectionClient`; both are :class:`_Blocking`.

Each public method is the async method wrapped once by :func:`_blocking` (or :func:`_blocking_iter`
for ``detect_many`` and ``track``), so that a sync client cannot drift from its async one. It works
from plain scripts and from code that already runs an event loop (a notebook), since the portal's
loop never is the caller's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, Unpack

from anyio.from_thread import BlockingPortal, start_blocking_portal

from clients._base import BaseClient
from clients._client import AsyncDetectionClient, ClientOptions
from clients._grpc import AsyncGrpcDetectionClient, GrpcClientOptions

__all__ = ["DetectionClient", "GrpcDetectionClient"]

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C", bound=BaseClient)
C_co = TypeVar("C_co", bound=BaseClient, covariant=True)  # a method of BaseClient serves both


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
    method: Callable[Concatenate[C, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[_Blocking[C], P], T]:
    """The blocking twin of one async client's coroutine method."""

    def call(self: _Blocking[C], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._loop.run(lambda: method(self._client, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


def _blocking_iter(
    method: Callable[Concatenate[C, P], AsyncGenerator[T, None]],
) -> Callable[Concatenate[_Blocking[C], P], Generator[T, None, None]]:
    """The iterator twin of one async client's async generator method."""

    def call(
        self: _Blocking[C], /, *args: P.args, **kwargs: P.kwargs
    ) -> Generator[T, None, None]:
        return self._iterate(method(self._client, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class _End:
    pass


async def _next(agen: AsyncGenerator[T, None]) -> T | _End:
    return await anext(agen, _End())


class _Blocking(Generic[C_co]):
    """An async client made and run on a portal of its own: the lifecycle and the iteration
    that every synchronous client shares."""

    def __init__(self, make: Callable[[], C_co]) -> None:
        self._loop = _Portal()
        try:
            self._client: C_co = self._loop.run(_made, make)  # made on its loop, as grpc.aio needs
        except BaseException:
            self._loop.close()
            raise

    @property
    def async_client(self) -> C_co:
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


async def _made(make: Callable[[], C]) -> C:
    return make()


class DetectionClient(_Blocking[AsyncDetectionClient]):
    """The synchronous :class:`AsyncDetectionClient`: same arguments, same methods, blocking.

    Use it as a context manager or call :meth:`close`. ``detect_many`` and ``track`` return
    iterators; their callbacks (``on_progress``, ``on_lost``) run on the client's thread and must
    not call the client. Close such a generator you leave early (``contextlib.closing``) to cancel
    its work at once.
    """

    def __init__(self, base_url: str, **options: Unpack[ClientOptions]) -> None:
        super().__init__(lambda: AsyncDetectionClient(base_url, **options))

    @property
    def base_url(self) -> str:
        return self._client.base_url

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


class GrpcDetectionClient(_Blocking[AsyncGrpcDetectionClient]):
    """The synchronous :class:`AsyncGrpcDetectionClient`: same arguments, same methods, blocking,
    as :class:`DetectionClient` is the synchronous HTTP client (``annotate`` and ``track`` need
    ``http_url``)."""

    def __init__(self, url: str, **options: Unpack[GrpcClientOptions]) -> None:
        super().__init__(lambda: AsyncGrpcDetectionClient(url, **options))

    @property
    def target(self) -> str:
        return self._client.target

    @property
    def http_url(self) -> str | None:
        return self._client.http_url

    detect = _blocking(AsyncGrpcDetectionClient.detect)
    classify = _blocking(AsyncGrpcDetectionClient.classify)
    annotate = _blocking(AsyncGrpcDetectionClient.annotate)
    detect_batch = _blocking(AsyncGrpcDetectionClient.detect_batch)
    detect_many = _blocking_iter(AsyncGrpcDetectionClient.detect_many)
    track = _blocking_iter(AsyncGrpcDetectionClient.track)
    model_info = _blocking(AsyncGrpcDetectionClient.model_info)
    list_models = _blocking(AsyncGrpcDetectionClient.list_models)
    health = _blocking(AsyncGrpcDetectionClient.health)
    wait_until_ready = _blocking(AsyncGrpcDetectionClient.wait_until_ready)
