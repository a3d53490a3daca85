"""The path of one image to the model and back: admission, the result cache and coalescing, the
decode pool, the model's batcher on the process's device, and a ``Result`` with its timings.

``Inferencer.detect`` is what every protocol awaits for an image. Identical image bytes with
identical parameters are computed once while in flight and then served from the cache; answers
from either say ``cached``. With Redis configured the cache has a second, fleet-wide level, and
the computation is coalesced across processes too (service.shared).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from batching import Device, DynamicBatcher
from service.engine.decode import ImageLimits, decode_image
from service.engine.types import Detections, DetectParams, ModelMeta, Prepared
from service.errors import DeadlineExceeded, WrongTask
from service.runtime.admission import Admission
from service.runtime.cache import ResultCache, TwoLevelCache, cache_key
from service.runtime.compute import decode_threads
from service.runtime.decoding import DecodePool
from service.runtime.monitoring import monitor_from_settings
from service.runtime.result import Result, Timings
from service.shared import SharedResults, decode, encode

if TYPE_CHECKING:
    from service.engine import Engine
    from service.metrics import ServiceMetrics
    from service.settings import Settings
    from service.shared import SharedStore

__all__ = ["Inferencer", "Job", "Outcome", "stored_evaluation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    prepared: Prepared
    params: DetectParams
    protocol: str = "v1"  # which front sent it: v1, v2 (the Open Inference Protocol), stream


def _shape(job: Job) -> tuple[int, ...]:
    return tuple(job.prepared.tensor.shape)


@dataclass(frozen=True)
class Outcome:
    detections: Detections
    inference_ms: float
    postprocess_ms: float


@dataclass(frozen=True)
class _Computed:
    """A result without the caller-specific parts (name, parameters): what the cache keeps."""

    detections: Detections
    batch_size: int
    timings: Timings


def stored_evaluation(meta: ModelMeta, decode_reduce: bool) -> dict[str, Any] | None:
    """The model's stored evaluation at its precision (``yoloserve evaluate``), if there is one."""
    from service.engine.evaluation import entry_for, variant

    source: Path | None = meta.source
    if source is None:
        return None
    return entry_for(source, meta.precision, variant(meta.letterbox, decode_reduce), meta.backend)


class Inferencer:
    """One model's detection path. Its batches run on ``device``, the process's forward-pass
    slots shared with every other batcher; ``admission`` is the process's too."""

    def __init__(self, engine: Engine, settings: Settings, metrics: ServiceMetrics, *,
                 device: Device, admission: Admission, decode_executor: Executor | None = None,
                 store: SharedStore | None = None) -> None:
        self._engine = engine
        self.meta = engine.meta
        self.evaluation = stored_evaluation(engine.meta, engine.decode_reduce)
        self.settings = settings
        self.metrics = metrics
        self.device = device
        self.admission = admission
        self.observer = metrics.for_model(engine.meta.name)
        self._decode = DecodePool(engine, decode_threads(settings), decode_executor)
        self.batcher: DynamicBatcher[Job, Outcome] = DynamicBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait=settings.max_wait_ms / 1000,
            max_queue=admission.capacity,  # a backstop: admission refuses first, by the same rule
            observer=self.observer,
            name=f"inference-{engine.meta.name}",
            # rect letterboxes differ in shape: a batch holds one shape (one forward pass)
            group_key=_shape if engine.meta.letterbox == "rect" else None,
            device=device,
            latency_target=(None if settings.latency_target_ms is None
                            else settings.latency_target_ms / 1000),
        )
        self._cache = self._result_cache(settings, store)
        self.monitor = monitor_from_settings(settings, engine.meta)

    # what the fronts may know of the model --------------------------------------------------------
    @property
    def classes(self) -> dict[int, str]:
        return self.meta.classes

    @property
    def limits(self) -> ImageLimits:
        return self._engine.limits

    @property
    def task(self) -> str:
        return self.meta.task

    def require(self, *tasks: str) -> None:
        """Refuse a route made for other tasks than this model's (400 ``wrong_task``)."""
        if self.meta.task not in tasks:
            kind = "a classifier" if self.meta.task == "classify" else f"a {self.meta.task} model"
            route = "/v1/classify" if self.meta.task == "classify" else "/v1/detect"
            raise WrongTask(f"model {self.meta.name!r} is {kind}: use {route}")

    @property
    def instances(self) -> int:
        """Forward passes that may run at once (the device's slots)."""
        return self.device.slots

    def _result_cache(self, settings: Settings,
                      store: SharedStore | None) -> TwoLevelCache[_Computed] | None:
        """This process's LRU, and Redis behind it when there is one (service.shared)."""
        if not settings.cache_enabled or settings.cache_size <= 0:
            return None
        classes = self.meta.classes
        # the fleet's level keeps boxes only (service.shared.codec): a detector's answers
        shared = None if store is None or self.meta.task != "detect" else SharedResults[_Computed](
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

    # the model, in a worker thread of the device ------------------------------------------------
    def _run_batch(self, jobs: list[Job]) -> list[Outcome]:
        self.observer.on_forward(len(jobs), "+".join(sorted({j.protocol for j in jobs})))
        out = self._engine.infer([j.prepared for j in jobs], [j.params for j in jobs])
        for det in out.detections:
            for name in det.class_names:
                self.observer.on_detection(name)
        if self.monitor is not None:
            m = self.monitor
            m.record(zip(det.class_ids.tolist(), det.scores.tolist(), strict=True)
                     for job, det in zip(jobs, out.detections, strict=True)
                     if m.counts(job.params.conf, job.params.classes))
            self.metrics.set_drift(self.meta.name, m.scores())
        return [Outcome(d, out.inference_ms, out.postprocess_ms) for d in out.detections]

    # the request path ---------------------------------------------------------------------------
    async def detect(
        self, data: bytes, name: str, params: DetectParams, deadline: float | None = None,
        protocol: str = "v1",
    ) -> Result:
        start = time.perf_counter()
        cached = False
        if self._cache is None:
            computed = await self._compute(data, name, params, deadline, protocol=protocol)
        else:
            # the model's version is in the key: a new model never serves an old answer
            key = cache_key(data, (self.meta.version, params))
            computed, cached = await self._cache.get_or_compute(
                key, lambda: self._compute(data, name, params, deadline, protocol=protocol), deadline)
        timings = computed.timings
        if cached:
            timings = Timings(total=(time.perf_counter() - start) * 1000)
        self.metrics.live.on_request(timings.total)
        return Result(computed.detections, name, self.meta.name, self.meta.version, params,
                      computed.batch_size, timings, cached)

    async def detect_frame(
        self, data: bytes, name: str, params: DetectParams, deadline: float | None = None,
    ) -> tuple[Result, NDArray[np.uint8]]:
        """A video frame, and the frame decoded (for its tracker); never cached (a stream's
        tracker needs every frame, and a video's frames are seldom the same bytes twice)."""
        decoded: list[NDArray[np.uint8]] = []

        def prepare() -> Prepared:
            image = decode_image(data, self._engine.limits)
            decoded.append(image)
            return self._engine.prepare_array(image, name)

        computed = await self._compute(b"", name, params, deadline, prepare=prepare,
                                       protocol="stream")
        self.metrics.live.on_request(computed.timings.total)
        result = Result(computed.detections, name, self.meta.name, self.meta.version, params,
                        computed.batch_size, computed.timings)
        return result, decoded[0]

    async def decode(self, data: bytes) -> NDArray[np.uint8]:
        """The image, decoded in the decode pool (to draw on it)."""
        return await self._decode.run(lambda: decode_image(data, self._engine.limits))

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
            queue=done.queue_wait * 1000,
            preprocess=prepared.preprocess_ms,
            inference=outcome.inference_ms,
            postprocess=outcome.postprocess_ms,
            total=(time.perf_counter() - t0) * 1000,
        )
        return _Computed(outcome.detections, done.batch_size, timings)
