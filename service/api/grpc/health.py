"""``grpc.health.v1.Health``: SERVING while the service takes work (loaded, not draining; an
overloaded one still serves and sheds what it cannot take), NOT_SERVING otherwise. Asked for the
whole server (``""``) or for ``inference.GRPCInferenceService``; another name is NOT_FOUND.

``Watch`` pushes each change as it happens: the servicer watches the app's lifecycle
(:meth:`AppState.watch`), so that NOT_SERVING reaches a watcher as soon as the service starts to
drain (SIGTERM), and SERVING as soon as its models are loaded. No watch polls. When the gRPC
server stops (:meth:`close`), every ``Watch`` ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from service.runtime.state import AppState, Lifecycle

__all__ = ["SERVICES", "HealthServicer"]

SERVICES = ("", "inference.GRPCInferenceService")
_Status = health_pb2.HealthCheckResponse


class HealthServicer:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unwatch: Callable[[], None] | None = None
        self._changed = asyncio.Event()  # set, then replaced, at each change: wakes every Watch
        self._closed = False

    def start(self) -> None:
        """Follow the app's lifecycle from now on (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._unwatch = self.state.watch(self._on_change)

    def close(self) -> None:
        """Stop following the lifecycle; every ``Watch`` ends after the status it has sent."""
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self._closed = True
        self._wake()

    def _on_change(self, _: Lifecycle) -> None:
        # called where the state changed: maybe a signal handler (SIGTERM), so only hand the
        # change to the loop, which the thread-safe call also wakes at once
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def status(self) -> Any:
        if self.state.lifecycle is Lifecycle.READY:
            return _Status.SERVING
        return _Status.NOT_SERVING

    async def Check(self, request: Any, context: Any) -> Any:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return _Status(status=self.status())

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        if request.service not in SERVICES:
            yield _Status(status=_Status.SERVICE_UNKNOWN)
            return
        last = None
        while True:
            changed = self._changed  # taken before the status is read: no change is missed
            now = self.status()
            if now != last:
                last = now
                yield _Status(status=now)
            if self._closed or self.state.lifecycle is Lifecycle.STOPPED:
                return
            await changed.wait()
