"""Prometheus metrics of the service, in a registry per app (multiprocess-safe under gunicorn).

Batcher metrics carry a ``model`` label: each served model has its own batcher, observed through
``ServiceMetrics.for_model(name)``. ``inference_batch_size`` also says which protocols (``v1``,
``v2``, ``grpc``, ``grpc+v1``…) the images of a batch came from; gRPC calls are counted by
method and status in ``grpc_requests_total``.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set before any worker starts; ``render`` then
aggregates every worker's files, so one scrape of ``/metrics`` covers all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.engine.types import ModelMeta
from service.livestats import LiveStats
from service.shared.metrics import SharedMetrics

__all__ = ["CONTENT_TYPE_LATEST", "ModelMetrics", "ServiceMetrics"]

_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
_GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ServiceMetrics:
    """Our metrics; also the batcher's observer (``on_batch``, ``on_dropped``, ``on_queue_depth``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.inference_total = Counter(
            "model_inference", "Images run through the model", ["model", "status"], registry=r)
        self.inference_latency = Histogram(
            "model_inference_latency_seconds", "Forward pass + NMS time per batch",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "inference_batch_size", "Images per forward pass, by the protocols they came from",
            ["model", "protocols"], buckets=_BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "inference_queue_wait_seconds", "Time an image waited in the batcher's queue",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "inference_queue_depth", "Images waiting in the batcher", ["model"], registry=r,
            multiprocess_mode="livesum")
        self.batch_size_limit = Gauge(
            "batch_size_limit", "The latency target's cap on a batch's size", ["model"],
            registry=r, multiprocess_mode="max")
        self.inflight_limit = Gauge(
            "batch_inflight_limit", "The latency target's cap on passes in flight", ["model"],
            registry=r, multiprocess_mode="max")
        self.dispatch = Counter(
            "batch_dispatch", "Batches sent, by reason (full, timeout, idle)", ["model", "reason"],
            registry=r)
        self.dropped = Counter(
            "requests_dropped", "Items dropped before inference", ["model", "reason"], registry=r)
        self.detections = Counter(
            "detections", "Objects detected, by class", ["model", "class_name"], registry=r)
        self.gpu_memory = Gauge(
            "gpu_memory_used_bytes", "CUDA memory allocated by this process", ["device"],
            registry=r, multiprocess_mode="livesum")
        self.model_info = Gauge(
            "model_info", "The served model", ["model", "version", "backend", "device", "precision"],
            registry=r, multiprocess_mode="liveall")
        self.grpc_requests = Counter(
            "grpc_requests", "Calls answered over gRPC (protocol grpc), by method and status",
            ["method", "code"], registry=r)
        self.grpc_latency = Histogram(
            "grpc_request_duration_seconds", "From a gRPC call's arrival to its answer, by method",
            ["method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.gc_pause = Histogram(
            "gc_pause_seconds", "Garbage collections of the serving process (the GIL is held "
            "throughout), by generation", ["generation"], buckets=_GC_BUCKETS, registry=r)
        self.gc_frozen = Gauge(
            "gc_frozen_objects", "Objects frozen out of the collector's reach after the model "
            "loaded", registry=r, multiprocess_mode="liveall")
        self.drift = Gauge(
            "model_drift_score", "Population stability index of a class's detections per image "
            "and confidences, sliding window against the baseline", ["model", "class_name"], registry=r,
            multiprocess_mode="livemax")
        self.device_slots = Gauge(
            "device_slots", "Forward passes the process runs at once, for every model it serves",
            registry=r, multiprocess_mode="livesum")
        self.device_busy = Gauge(
            "device_passes_in_flight", "Forward passes dispatched and not yet returned (one "
            "staged full batch may count above the slots)", registry=r,
            multiprocess_mode="livesum")
        self.device_peak = Gauge(
            "device_passes_peak", "The most forward passes that ran at once since the start",
            registry=r, multiprocess_mode="livemax")
        self.admitted = Gauge(
            "admitted_images", "Images admitted and not yet answered (decoding, queued or "
            "running), every model together", registry=r, multiprocess_mode="livesum")
        self.live = LiveStats()
        # video streams
        self.streams_active = Gauge(
            "streams_active", "Video streams held", registry=r, multiprocess_mode="livesum")
        self.stream_frames = Counter("stream_frames", "Stream frames tracked", registry=r)
        self.stream_frames_dropped = Counter(
            "stream_frames_dropped", "Stream frames not tracked, by reason (stale, failed)",
            ["reason"], registry=r)
        self.stream_tracks = Gauge(
            "stream_tracks_alive", "Confirmed tracks in the streams' last frames", registry=r,
            multiprocess_mode="livesum")
        self.streams_ended = Counter(
            "streams_ended", "Streams removed, by reason (expired, deleted, closed)", ["reason"],
            registry=r)
        self.stream_refused = Counter(
            "streams_refused", "New streams refused past max_streams", registry=r)
        self.shared = SharedMetrics(r)  # cache levels, coalescing, Redis
        self.model_name = "model"

    def set_model(self, meta: ModelMeta) -> None:
        """Record a served model (once per model; the first one is the default)."""
        if self.model_name == "model":
            self.model_name = meta.name
        self.model_info.labels(meta.name, meta.version, meta.backend, meta.device,
                               meta.precision).set(1)

    def for_model(self, name: str) -> ModelMetrics:
        """The batcher observer and counters of one model."""
        return ModelMetrics(self, name)

    # the default model's batcher observer ------------------------------------------------------
    def on_batch(self, size: int, reason: str, exec_seconds: float,
                 queue_waits: Sequence[float], failed: bool) -> None:
        self.for_model(self.model_name).on_batch(size, reason, exec_seconds, queue_waits, failed)

    def on_dropped(self, reason: str, count: int) -> None:
        self.for_model(self.model_name).on_dropped(reason, count)

    def on_queue_depth(self, depth: int) -> None:
        self.for_model(self.model_name).on_queue_depth(depth)

    def set_drift(self, model: str, scores: dict[str, float]) -> None:
        for name, score in scores.items():
            self.drift.labels(model, name).set(score)

    # garbage collector (service.heap) ----------------------------------------------------------
    def on_gc_pause(self, generation: int, seconds: float) -> None:
        self.gc_pause.labels(str(generation)).observe(seconds)

    # read side --------------------------------------------------------------------------------
    def update_device(self, slots: int, busy: int, peak: int, admitted: int) -> None:
        self.device_slots.set(slots)
        self.device_busy.set(busy)
        self.device_peak.set(peak)
        self.admitted.set(admitted)

    def update_gpu_memory(self, device: str) -> None:
        if not device.startswith("cuda"):
            return
        import torch

        self.gpu_memory.labels(device).set(torch.cuda.memory_allocated(device))

    def render(self) -> bytes:
        if multiprocess_mode():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class ModelMetrics:
    """One model's view of the metrics: the observer of its batcher, its labels filled in."""

    def __init__(self, metrics: ServiceMetrics, model: str) -> None:
        self.metrics = metrics
        self.model = model

    def on_batch(self, size: int, reason: str, exec_seconds: float,
                 queue_waits: Sequence[float], failed: bool) -> None:
        m = self.metrics
        m.dispatch.labels(self.model, reason).inc()
        m.inference_latency.labels(self.model).observe(exec_seconds)
        waits = m.queue_wait.labels(self.model)
        for wait in queue_waits:
            waits.observe(wait)
        status = "error" if failed else "success"
        m.inference_total.labels(self.model, status).inc(size)
        m.live.on_batch(size)

    def on_dropped(self, reason: str, count: int) -> None:
        self.metrics.dropped.labels(self.model, reason).inc(count)
        self.metrics.live.on_refused(reason, count)

    def on_queue_depth(self, depth: int) -> None:
        self.metrics.queue_depth.labels(self.model).set(depth)

    def on_latency_plan(self, max_batch_size: int, max_inflight: int) -> None:
        """The latency target's caps, as the batcher chose them last."""
        self.metrics.batch_size_limit.labels(self.model).set(max_batch_size)
        self.metrics.inflight_limit.labels(self.model).set(max_inflight)

    def on_forward(self, size: int, protocols: str) -> None:
        """A forward pass of ``size`` images from ``protocols`` (``v1``, ``v2``, ``v1+v2``)."""
        self.metrics.batch_size.labels(self.model, protocols).observe(size)

    def on_detection(self, class_name: str) -> None:
        self.metrics.detections.labels(self.model, class_name).inc()
