"""The garbage collector in a serving process: what is loaded once is frozen, pauses are measured.

Once the model is loaded the process holds torch, ONNX Runtime's bindings, Ultralytics and the
app: about 380,000 objects the cyclic collector tracks. A full collection walks all of them, about
200 ms on 2 cores with the GIL held, so every request in flight stalls for that long; under load
one came about every 30 s (seen with the demo model at saturation). ``gc.freeze()`` after loading
moves them to a permanent generation the collector skips, so later collections walk only what
requests made (a few milliseconds at most). It also keeps pages shared after a fork.

``GcPauses`` times every collection (``gc.callbacks``) into a histogram by generation, so that a
pause that does come shows on ``/metrics`` as ``gc_pause_seconds``.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Protocol

__all__ = ["GcPauses", "freeze_loaded_heap", "thaw_heap"]


def freeze_loaded_heap() -> int:
    """Collect once, then freeze every surviving object; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_heap() -> None:
    """Give the frozen objects back to the collector (when the app stops: in a process that goes
    on, a test runner say, what the app held can then be collected)."""
    gc.unfreeze()


class _PauseSink(Protocol):
    def on_gc_pause(self, generation: int, seconds: float) -> None: ...


class GcPauses:
    """Reports the length of each garbage collection to ``sink`` while started."""

    def __init__(self, sink: _PauseSink) -> None:
        self._sink = sink
        self._started_at = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = time.perf_counter()
        elif self._started_at:
            self._sink.on_gc_pause(int(info["generation"]), time.perf_counter() - self._started_at)
            self._started_at = 0.0

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
