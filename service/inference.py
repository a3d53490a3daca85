"""The path of one image from HTTP to the model and back: admission, the result cache and
coalescing, the decode pool, the batcher, and the answer with its timings.

``Inferencer.detect`` is what every detection route awaits. Identical image bytes with identical
parameters are computed once while in flight and then served from the cache; answers from either
say ``cached: true``. With Redis configured the cache has a second, fleet-wide level, and the
computation is coalesced across processes too (service/shared/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batching import DynamicBatcher
from service.admission import Admission, capacity
from service.compute import decode_threads
from service.decoding import DecodePool
from service.engine.types import Detections, DetectParams, Prepared
from service.errors import DeadlineExceeded
from service.monitoring import monitor_from_settings
from service.result_cache import ResultCache, cache_key
from service.results import stored_evaluation, to_result
from service.shared import SharedResults, TwoLevelCache, decode, encode
from wire.schemas import DetectionResult, Timings

if TYPE_CHECKING:
    from service.engine import Engine
    from service.metrics import ServiceMetrics
    from service.settings import Settings
    from service.shared import SharedStore

__all__ = ["Inferencer", "Job", "Outcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    prepared: Prepared
    params: DetectParams
    protocol: str = "v1"  # which API sent it: v1 or v2 (the Open Inference Protocol)


def _shape(job: Job) -> tuple[int, ...]:
    return tuple(job.prepared.tensor.shape)


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
                 concurrent_batches: int = 1, decode_executor: Executor | None = None,
                 store: SharedStore | None = None) -> None:
        self.engine = engine
        meta = engine.meta
        self.evaluation = stored_evaluation(meta.source, meta.precision, meta.letterbox,
                                            meta.backend, engine.decode_reduce)
        self.settings = settings
        self.metrics = metrics
        self.concurrent_batches = concurrent_batches
        self.observer = metrics.for_model(engine.meta.name)
        self._decode = DecodePool(engine, decode_threads(settings), decode_executor)
        limit = capacity(settings.max_queue, settings.max_batch_size, concurrent_batches)
        self.batcher: DynamicBatcher[Job, Outcome] = DynamicBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait=settings.max_wait_ms / 1000,
            max_queue=limit,  # a backstop: admission refuses first, by the same rule
            max_concurrent_batches=concurrent_batches,
            observer=self.observer,
            name=f"inference-{engine.meta.name}",
            # rect letterboxes differ in shape: a batch holds one shape (one forward pass)
            group_key=_shape if engine.meta.letterbox == "rect" else None,
        )
        self.admission = Admission(limit, self.batcher)
        self._cache = self._result_cache(settings, store)
        self.monitor = monitor_from_settings(settings, engine.meta)

    def _result_cache(self, settings: Settings,
                      store: SharedStore | None) -> TwoLevelCache[_Computed] | None:
        """This process's LRU, and Redis behind it when there is one (service/shared/)."""
        if not settings.cache_enabled or settings.cache_size <= 0:
            return None
        classes = self.engine.meta.classes
        shared = None if store is None else SharedResults[_Computed](
            store, ttl_s=settings.cache_ttl_s, lease_s=settings.redis_lock_lease_ms / 1000,
            encode=lambda c: encode(c.detections, c.batch_size),
            decode=lambda b: _Computed(*decode(b, classes), Timings()))
        local: ResultCache[_Computed] = ResultCache(settings.cache_size, settings.cache_ttl_s)
        return TwoLevelCache(local, shared, self.metrics.shared)

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.batcher.start()

    async def close(self, drain_timeout: float) -> None:
        await self.batcher.close(drain_timeout)
        self._decode.close()

    # the model, in the batcher's worker thread ------------------------------------------------
    def _run_batch(self, jobs: list[Job]) -> list[Outcome]:
        self.observer.on_forward(len(jobs), "+".join(sorted({j.protocol for j in jobs})))
        out = self.engine.infer([j.prepared for j in jobs], [j.params for j in jobs])
        for det in out.detections:
            for d in det.items:
                self.observer.on_detection(d.class_name)
        if self.monitor is not None:
            m = self.monitor
            m.record([(d.class_id, d.confidence) for d in det.items]
                     for job, det in zip(jobs, out.detections, strict=True)
                     if m.counts(job.params.conf, job.params.classes))
            self.metrics.set_drift(self.engine.meta.name, m.scores())
        return [Outcome(d, out.inference_ms, out.postprocess_ms) for d in out.detections]

    # the request path ---------------------------------------------------------------------------
    async def detect(
        self, data: bytes, name: str, params: DetectParams, deadline: float | None = None,
        protocol: str = "v1",
    ) -> DetectionResult:
        start = time.perf_counter()
        cached = False
        if self._cache is None:
            computed = await self._compute(data, name, params, deadline, protocol=protocol)
        else:
            # the model's version is in the key: a new model never serves an old answer
            key = cache_key(data, (self.engine.meta.version, params))
            computed, cached = await self._cache.get_or_compute(
                key, lambda: self._compute(data, name, params, deadline, protocol=protocol), deadline)
        timings = computed.timings.model_copy()
        if cached:
            timings = Timings(total=round((time.perf_counter() - start) * 1000, 3))
        self.metrics.live.on_request(timings.total)
        return to_result(
            computed.detections, name=name, model=self.engine.meta.name,
            version=self.engine.meta.version, params=params,
            batch_size=computed.batch_size, timings=timings, cached=cached,
        )

    async def detect_frame(
        self, prepare: Callable[[], Prepared], name: str, params: DetectParams,
        deadline: float | None = None,
    ) -> DetectionResult:
        """A video frame, made ready by ``prepare`` in the decode pool; never cached (a stream's
        tracker needs every frame, and a video's frames are seldom the same bytes twice)."""
        computed = await self._compute(b"", name, params, deadline, prepare=prepare)
        self.metrics.live.on_request(computed.timings.total)
        return to_result(
            computed.detections, name=name, model=self.engine.meta.name,
            version=self.engine.meta.version, params=params,
            batch_size=computed.batch_size, timings=computed.timings,
        )

    async def _compute(
        self, data: bytes, name: str, params: DetectParams, deadline: float | None,
        prepare: Callable[[], Prepared] | None = None,
        protocol: str = "v1",
    ) -> _Computed:
        if self.admission.overloaded:  # refuse before decoding: overload costs nothing
            self.observer.on_dropped("refused", 1)
            raise self.admission.refusal()
        with self.admission.admit():
            t0 = time.perf_counter()
            prepared = await (self._decode.prepare(data, name) if prepare is None
                              else self._decode.run(prepare))
            if deadline is not None and time.monotonic() >= deadline:
                self.observer.on_dropped("expired", 1)
                raise DeadlineExceeded("the request's deadline passed before inference; it was not run")
            done = await self.batcher.submit_detailed(Job(prepared, params, protocol),
                                                      deadline=deadline)
        outcome = done.value
        timings = Timings(
            queue=round(done.queue_wait * 1000, 3),
            preprocess=round(prepared.preprocess_ms, 3),
            inference=round(outcome.inference_ms, 3),
            postprocess=round(outcome.postprocess_ms, 3),
            total=round((time.perf_counter() - t0) * 1000, 3),
        )
        return _Computed(outcome.detections, done.batch_size, timings)
