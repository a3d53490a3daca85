"""The glue between HTTP and the model: decode in a thread pool, batch, cache, coalesce.

``Inferencer.detect`` is what every detection route awaits. Identical image bytes with identical
parameters are computed once while in flight (the later callers wait on the first one's task) and
then served from a small LRU with a TTL; answers from either say ``cached: true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import TLRUCache

from batching import DynamicBatcher
from service.engine.types import Detections, DetectParams, Prepared
from service.errors import DeadlineExceeded, Overloaded
from service.results import to_result
from service.schemas import DetectionResult, Timings

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
        self._pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="decode")
        self.batcher: DynamicBatcher[Job, Outcome] = DynamicBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait=settings.max_wait_ms / 1000,
            max_queue=max(1, settings.max_queue),
            max_concurrent_batches=concurrent_batches,
            observer=metrics,
            name="inference",
        )
        size = settings.cache_size if settings.cache_enabled else 0
        ttl = settings.cache_ttl_s
        self._cache: TLRUCache[bytes, _Computed] | None = (
            TLRUCache(maxsize=size, ttu=lambda _k, _v, now: now + ttl, timer=time.monotonic)
            if size > 0 else None
        )
        self._inflight: dict[bytes, tuple[asyncio.Task[_Computed], list[int]]] = {}
        # Admission before any work: what may be decoding or queued, plus what may be running.
        self._admitted = 0
        self._max_admitted = (settings.max_queue
                              + settings.max_batch_size * concurrent_batches)

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.batcher.start()

    async def close(self, drain_timeout: float) -> None:
        await self.batcher.close(drain_timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # the model, in the batcher's worker thread ------------------------------------------------
    def _run_batch(self, jobs: list[Job]) -> list[Outcome]:
        out = self.engine.infer([j.prepared for j in jobs], [j.params for j in jobs])
        for det in out.detections:
            for d in det.items:
                self.metrics.detections.labels(d.class_name).inc()
        return [Outcome(d, out.inference_ms, out.postprocess_ms) for d in out.detections]

    # the request path ---------------------------------------------------------------------------
    async def prepare(self, data: bytes, name: str) -> Prepared:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.engine.prepare, data, name)

    async def detect(
        self, data: bytes, name: str, params: DetectParams, deadline: float | None = None
    ) -> DetectionResult:
        start = time.perf_counter()
        key = self._key(data, params) if self._cache is not None else None
        cached = False
        if key is None:
            computed = await self._compute(data, name, params, deadline)
        else:
            hit = self._cache.get(key) if self._cache is not None else None
            cached = hit is not None or key in self._inflight
            computed = hit if hit is not None else await self._shared(key, data, name, params, deadline)
        timings = computed.timings.model_copy()
        if cached:
            timings = Timings(total=round((time.perf_counter() - start) * 1000, 3))
        return to_result(
            computed.detections, name=name, version=self.engine.meta.version, params=params,
            batch_size=computed.batch_size, timings=timings, cached=cached,
        )

    def _key(self, data: bytes, params: DetectParams) -> bytes:
        h = hashlib.blake2b(data, digest_size=20)
        h.update(repr(params).encode())
        return h.digest()

    async def _shared(
        self, key: bytes, data: bytes, name: str, params: DetectParams, deadline: float | None
    ) -> _Computed:
        """Run the computation once per key; cancel it only when every waiter has gone."""
        if key not in self._inflight:
            task = asyncio.create_task(self._compute(data, name, params, deadline))
            self._inflight[key] = (task, [0])
            task.add_done_callback(lambda t: self._finish(key, t))
        task, waiters = self._inflight[key]
        waiters[0] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            waiters[0] -= 1
            if waiters[0] == 0 and not task.done():
                task.cancel()
            raise

    def _finish(self, key: bytes, task: asyncio.Task[_Computed]) -> None:
        self._inflight.pop(key, None)
        if self._cache is not None and not task.cancelled() and task.exception() is None:
            self._cache[key] = task.result()

    async def _compute(
        self, data: bytes, name: str, params: DetectParams, deadline: float | None
    ) -> _Computed:
        if self._admitted >= self._max_admitted:  # refuse before decoding: overload costs nothing
            self.metrics.on_dropped("refused", 1)
            raise Overloaded("the inference queue is full; retry later", retry_after=1.0)
        self._admitted += 1
        try:
            return await self._admitted_compute(data, name, params, deadline)
        finally:
            self._admitted -= 1

    async def _admitted_compute(
        self, data: bytes, name: str, params: DetectParams, deadline: float | None
    ) -> _Computed:
        t0 = time.perf_counter()
        prepared = await self.prepare(data, name)
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
