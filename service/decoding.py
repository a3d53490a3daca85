"""The decode pool: decoding and letterboxing in threads, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from service.engine import Engine
    from service.engine.types import Prepared

__all__ = ["DecodePool"]

T = TypeVar("T")


class DecodePool:
    def __init__(self, engine: Engine, threads: int) -> None:
        self._engine = engine
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    async def prepare(self, data: bytes, name: str) -> Prepared:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._engine.prepare, data, name)

    async def run(self, prepare: Callable[[], T]) -> T:
        """A caller's own preparation (a video frame kept decoded for its tracker) in the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, prepare)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
