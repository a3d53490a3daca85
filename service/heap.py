"""The garbage collector in a serving process: what is loaded once is frozen, pauses are measured.

Once the model is loaded the process holds torch, ONNX Runtime's bindings, Ultralytics and the
app: a large heap of objects the cyclic collector tracks. A full collection walks all of them with
the GIL held, long enough to stall every request in flight, and such collections do come at
saturation. ``gc.freeze()`` after loading moves them to a permanent generation the collector
skips, so later collections walk only what requests made; see ``bench/README.md`` ("Heap
freezing") for the figures. It also keeps pages shared after a fork. ``frozen_heap`` does
the same for a bounded run, such as a load generator's in a process that has loaded torch, whose
own collections would otherwise be counted as the server's latency.

``GcPauses`` times every collection (``gc.callbacks``) into a histogram by generation, so that a
pause that does come shows on ``/metrics`` as ``gc_pause_seconds``. The callback only records:
a collection can start inside any allocation, also one made while a metrics lock is held (a
labelled child being created in Prometheus's multiprocess mode), and observing there would take
that lock again and deadlock the thread. The records reach the sink from ``flush``: every second
on the event loop, and before each scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

__all__ = ["GcPauses", "freeze_loaded_heap", "frozen_heap", "thaw_heap"]


def freeze_loaded_heap() -> int:
    """Collect once, then freeze every surviving object; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_heap() -> None:
    """Give the frozen objects back to the collector (when the app stops: in a process that goes
    on, a test runner say, what the app held can then be collected)."""
    gc.unfreeze()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Everything that exists on entry is out of the collector's reach until exit."""
    freeze_loaded_heap()
    try:
        yield
    finally:
        thaw_heap()


class _PauseSink(Protocol):
    def on_gc_pause(self, generation: int, seconds: float) -> None: ...


class GcPauses:
    """Reports the length of each garbage collection to ``sink`` while started."""

    FLUSH_EVERY_S = 1.0
    MAX_PENDING = 4096  # pauses kept between flushes; older ones are dropped past it

    def __init__(self, sink: _PauseSink) -> None:
        self._sink = sink
        self._started_at = 0.0
        # deque.append is atomic and takes no lock: safe inside a collection
        self._pending: deque[tuple[int, float]] = deque(maxlen=self.MAX_PENDING)
        self._flusher: asyncio.Task[None] | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = time.perf_counter()
        elif self._started_at:
            self._pending.append((int(info["generation"]), time.perf_counter() - self._started_at))
            self._started_at = 0.0

    def flush(self) -> None:
        """Hand the pauses recorded since the last flush to the sink."""
        while self._pending:
            generation, seconds = self._pending.popleft()
            self._sink.on_gc_pause(generation, seconds)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_EVERY_S)
            self.flush()

    def start(self) -> None:
        """Time collections from now on; on a running event loop, also flush every second."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        with contextlib.suppress(RuntimeError):  # no running loop: flush() is called by hand
            if self._flusher is None:
                self._flusher = asyncio.get_running_loop().create_task(
                    self._flush_periodically(), name="gc-pause-flush")

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.flush()
