"""``grpc.health.v1.Health``: SERVING while the service takes work (loaded, not draining; an
overloaded one still serves and sheds what it cannot take), NOT_SERVING otherwise. Asked for the
whole server (``""``) or for ``inference.GRPCInferenceService``; another name is NOT_FOUND."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from service.runtime.state import AppState, Lifecycle

__all__ = ["SERVICES", "HealthServicer"]

SERVICES = ("", "inference.GRPCInferenceService")
WATCH_INTERVAL_S = 1.0  # how often a Watch looks at the state (it has no event to wait on)
_Status = health_pb2.HealthCheckResponse


class HealthServicer:
    def __init__(self, state: AppState) -> None:
        self.state = state

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
            now = self.status()
            if now != last:
                last = now
                yield _Status(status=now)
            if self.state.lifecycle is Lifecycle.STOPPED:
                return
            await asyncio.sleep(WATCH_INTERVAL_S)
