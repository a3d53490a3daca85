"""The demo page (``GET /`` and its files under ``/static``) and the two small JSON endpoints its
live panel polls: ``GET /v1/stats`` (this process's recent traffic) and ``GET /v1/monitoring``
(drift of the detections against the baseline)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from service.api.deps import StateDep

__all__ = ["CONTENT_SECURITY_POLICY", "router", "static_files"]

router = APIRouter(tags=["dashboard"])

# the page fetches nothing from elsewhere, and the browser enforces it
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "connect-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


def _static_dir() -> Path:
    return Path(str(resources.files("service") / "static"))


def static_files() -> StaticFiles:
    """The page's script, style sheet and icon, from the package."""
    return StaticFiles(directory=_static_dir())


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(_static_dir() / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                 "Cache-Control": "no-cache"})


class Latency(BaseModel):
    p50: float | None = Field(None, description="Milliseconds, median of the recent requests")
    p99: float | None = None


class LiveStatsResponse(BaseModel):
    span_s: float = Field(description="The figures cover this many recent seconds")
    images_per_s: float
    batches_per_s: float
    batch_sizes: dict[str, int] = Field(description="Batches run, by size")
    queue_depth: int
    inflight_batches: int
    requests: int
    latency_ms: Latency
    refusals: dict[str, int] = Field(description="Images refused or dropped, by reason")
    refusals_total: int


class Histograms(BaseModel):
    per_image: list[int] = Field(description="Images holding 0, 1, 2, 3, 4+ objects of the class")
    confidence: list[int] = Field(description="Detections by confidence, from min_conf to 1")
    rate: float = Field(description="Detections of the class per image")


class ClassDrift(BaseModel):
    class_id: int
    class_name: str
    score: float | None = Field(description="Population stability index; None until scored")
    baseline: Histograms | None
    window: Histograms


class MonitoringResponse(BaseModel):
    state: str = Field(description="disabled, capturing_baseline, filling_window or scoring")
    threshold: float | None = None
    min_conf: float | None = None
    window_images: int = 0
    window_size: int = 0
    baseline_images: int | None = None
    baseline_target: int | None = None
    baseline_source: str | None = None
    count_bins: list[str] = Field(default_factory=list)
    confidence_bins: int = 0
    classes: list[ClassDrift] = Field(default_factory=list)


@router.get("/v1/stats", response_model=LiveStatsResponse, summary="Recent traffic of this process")
async def stats(state: StateDep) -> LiveStatsResponse:
    inf = state.inferencer
    snapshot = state.metrics.live.snapshot(
        queue_depth=inf.batcher.queue_depth if inf else 0,
        inflight_batches=inf.batcher.inflight_batches if inf else 0)
    return LiveStatsResponse.model_validate(snapshot)


@router.get("/v1/monitoring", response_model=MonitoringResponse,
            summary="Drift of the detections against the baseline, per class")
async def monitoring(state: StateDep) -> MonitoringResponse:
    inf = state.inferencer
    if inf is None or inf.monitor is None:
        return MonitoringResponse(state="disabled" if inf is not None else "starting")
    return MonitoringResponse.model_validate(inf.monitor.snapshot())
