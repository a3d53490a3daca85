"""The worker threads: a thread pool for ``batch_fn`` and its bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from ._pending import settle_result

__all__ = ["shutdown_executor"]

logger = logging.getLogger(__name__)


async def shutdown_executor(executor: ThreadPoolExecutor, *, name: str, grace: float) -> bool:
    """Shut ``executor`` down and wait up to ``grace`` seconds for its threads to exit.

    The blocking join runs in a short-lived helper thread, so the event loop never blocks on a
    ``batch_fn`` that is still running. Tells whether every worker thread has exited; if not,
    they exit by themselves when ``batch_fn`` returns (a thread cannot be interrupted).
    """
    loop = asyncio.get_running_loop()
    joined: asyncio.Future[None] = loop.create_future()

    def join() -> None:
        executor.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(RuntimeError):  # the loop is closed if we gave up waiting
            loop.call_soon_threadsafe(settle_result, joined, None)

    joiner = threading.Thread(target=join, name=f"{name}-shutdown", daemon=True)
    joiner.start()
    try:
        async with asyncio.timeout(grace):
            await joined
    except TimeoutError:
        logger.warning(
            "%s: batch_fn is still running in a worker thread; it exits when batch_fn returns",
            name,
        )
        return False
    joiner.join()  # it has done its work and is returning; this only reaps it
    return True
