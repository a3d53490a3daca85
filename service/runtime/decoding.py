"""The decode pool: decoding and letterboxing in threads, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from service.engine import Engine
    from service.engine.types import Prepared

__all__ = ["DecodePool"]

T = TypeVar("T")


class DecodePool:
    """Decoding for one engine, in its own threads or in ``executor`` (shared by several models;
    its owner shuts it down)."""

    def __init__(self, engine: Engine, threads: int, executor: Executor | None = None) -> None:
        self._engine = engine
        self._owned = executor is None
        self._pool = executor or ThreadPoolExecutor(threads, thread_name_prefix="decode")

    async def prepare(self, data: bytes, name: str) -> Prepared:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._engine.prepare, data, name)

    async def run(self, prepare: Callable[[], T]) -> T:
        """A caller's own preparation (a video frame kept decoded for its tracker) in the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, prepare)

    def close(self) -> None:
        if self._owned:
            self._pool.shutdown(wait=True, cancel_futures=True)
