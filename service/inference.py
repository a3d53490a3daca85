"""The path of one image from HTTP to the model and back: admission, the result cache and
coalescing, the decode pool, the batcher, and the answer with its timings.

``Inferencer.detect`` is what every detection route awaits. Identical image bytes with identical
parameters are computed once while in flight and then served from the cache; answers from either
say ``cached: true``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batching import DynamicBatcher
from service.admission import Admission, capacity
from service.coalesce import Coalescer
from service.decoding import DecodePool
from service.engine.types import Detections, DetectParams, Prepared
from service.errors import DeadlineExceeded
from service.result_cache import ResultCache, cache_key
from service.results import to_result
from wire.schemas import DetectionResult, Timings

if TYPE_CHECKING:
    from service.engine import Engine
    from service.metrics import ServiceMetrics
    from service.settings import Settings

__all__ = ["Inferencer", "Job", "Outcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    prepared: Prepared
    params: DetectParams


@dataclass(frozen=True)
class Outcome:
    detections: Detections
    inference_ms: float
    postprocess_ms: float


@dataclass(frozen=True)
class _Computed:
    """A result without the caller-specific parts (name, timestamp)."""

    detections: Detections
    batch_size: int
    timings: Timings


class Inferencer:
    def __init__(self, engine: Engine, settings: Settings, metrics: ServiceMetrics,
                 concurrent_batches: int = 1) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self._decode = DecodePool(engine, settings.preprocess_threads)
        limit = capacity(settings.max_queue, settings.max_batch_size, concurrent_batches)
        self.batcher: DynamicBatcher[Job, Outcome] = DynamicBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait=settings.max_wait_ms / 1000,
            max_queue=limit,  # a backstop: admission refuses first, by the same rule
            max_concurrent_batches=concurrent_batches,
            observer=metrics,
            name="inference",
        )
        self.admission = Admission(limit, self.batcher)
        size = settings.cache_size if settings.cache_enabled else 0
        self._cache: ResultCache[_Computed] | None = (
            ResultCache(size, settings.cache_ttl_s) if size > 0 else None)
        self._coalesce: Coalescer[_Computed] = Coalescer(
            self._cache.put if self._cache is not None else None)

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.batcher.start()

    async def close(self, drain_timeout: float) -> None:
        await self.batcher.close(drain_timeout)
        self._decode.close()

    # the model, in the batcher's worker thread ------------------------------------------------
    def _run_batch(self, jobs: list[Job]) -> list[Outcome]:
        out = self.engine.infer([j.prepared for j in jobs], [j.params for j in jobs])
        for det in out.detections:
            for d in det.items:
                self.metrics.detections.labels(d.class_name).inc()
        return [Outcome(d, out.inference_ms, out.postprocess_ms) for d in out.detections]

    # the request path ---------------------------------------------------------------------------
    async def detect(
        self, data: bytes, name: str, params: DetectParams, deadline: float | None = None
    ) -> DetectionResult:
        start = time.perf_counter()
        cached = False
        if self._cache is None:
            computed = await self._compute(data, name, params, deadline)
        else:
            key = cache_key(data, params)
            hit = self._cache.get(key)
            cached = hit is not None or key in self._coalesce
            computed = hit if hit is not None else await self._coalesce.run(
                key, lambda: self._compute(data, name, params, deadline))
        timings = computed.timings.model_copy()
        if cached:
            timings = Timings(total=round((time.perf_counter() - start) * 1000, 3))
        return to_result(
            computed.detections, name=name, version=self.engine.meta.version, params=params,
            batch_size=computed.batch_size, timings=timings, cached=cached,
        )

    async def detect_frame(
        self, prepare: Callable[[], Prepared], name: str, params: DetectParams,
        deadline: float | None = None,
    ) -> DetectionResult:
        """A video frame, made ready by ``prepare`` in the decode pool; never cached (a stream's
        tracker needs every frame, and a video's frames are seldom the same bytes twice)."""
        computed = await self._compute(b"", name, params, deadline, prepare)
        return to_result(
            computed.detections, name=name, version=self.engine.meta.version, params=params,
            batch_size=computed.batch_size, timings=computed.timings,
        )

    async def _compute(
        self, data: bytes, name: str, params: DetectParams, deadline: float | None,
        prepare: Callable[[], Prepared] | None = None,
    ) -> _Computed:
        if self.admission.overloaded:  # refuse before decoding: overload costs nothing
            self.metrics.on_dropped("refused", 1)
            raise self.admission.refusal()
        with self.admission.admit():
            t0 = time.perf_counter()
            prepared = await (self._decode.prepare(data, name) if prepare is None
                              else self._decode.run(prepare))
            if deadline is not None and time.monotonic() >= deadline:
                self.metrics.on_dropped("expired", 1)
                raise DeadlineExceeded("the request's deadline passed before inference; it was not run")
            done = await self.batcher.submit_detailed(Job(prepared, params), deadline=deadline)
        outcome = done.value
        timings = Timings(
            queue=round(done.queue_wait * 1000, 3),
            preprocess=round(prepared.preprocess_ms, 3),
            inference=round(outcome.inference_ms, 3),
            postprocess=round(outcome.postprocess_ms, 3),
            total=round((time.perf_counter() - t0) * 1000, 3),
        )
        return _Computed(outcome.detections, done.batch_size, timings)
