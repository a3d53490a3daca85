"""The serving process's heap: frozen after loading, and every collection timed."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.engine import Engine
from service.heap import GcPauses, freeze_loaded_heap, thaw_heap

MODEL = Path(__file__).resolve().parents[2] / "models" / "demo.onnx"


@pytest.fixture
def thawed() -> Iterator[None]:
    yield
    thaw_heap()


def _full_collection_seconds() -> float:
    started = time.perf_counter()
    gc.collect()
    return time.perf_counter() - started


def test_freezing_the_loaded_heap_makes_a_full_collection_cheap(thawed: None) -> None:
    engine = Engine.load(MODEL, backend="onnx", device="cpu")  # torch, ONNX Runtime, the model
    thaw_heap()
    gc.collect()
    before = min(_full_collection_seconds() for _ in range(2))
    frozen = freeze_loaded_heap()
    assert frozen == gc.get_freeze_count() > 100_000
    after = max(_full_collection_seconds() for _ in range(2))
    assert after < 0.2 * before, (after, before)
    thaw_heap()
    assert gc.get_freeze_count() == 0
    del engine


class _Sink:
    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []

    def on_gc_pause(self, generation: int, seconds: float) -> None:
        self.pauses.append((generation, seconds))


def test_gc_pauses_are_reported_by_generation_while_started() -> None:
    sink = _Sink()
    pauses = GcPauses(sink)
    pauses.start()
    pauses.start()  # once only
    try:
        gc.collect(1)
        gc.collect()
        assert sink.pauses == []  # recorded, not reported from inside a collection
        pauses.flush()
    finally:
        pauses.stop()
    assert [g for g, _ in sink.pauses] == [1, 2]
    assert all(seconds > 0 for _, seconds in sink.pauses)
    gc.collect()
    assert len(sink.pauses) == 2  # stopped
    pauses.stop()  # idempotent


def test_a_collection_inside_a_metrics_lock_does_not_deadlock() -> None:
    """A collection that starts while Prometheus's value lock is held (creating a labelled child
    allocates) must not observe into a metric there: the lock is not reentrant."""
    import threading

    lock = threading.Lock()

    class _Locking:
        def on_gc_pause(self, generation: int, seconds: float) -> None:
            with lock:
                pass

    pauses = GcPauses(_Locking())
    pauses.start()
    try:
        with lock:  # as MmapedValue.__init__ holds it while it allocates
            gc.collect()
        pauses.flush()
    finally:
        pauses.stop()
