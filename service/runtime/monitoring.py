"""Model monitoring: per-class detection rates and confidence distributions over a sliding window
of images, compared with a baseline by a population stability index (PSI) per class.

For each class two distributions are kept: how many objects of the class an image holds (bins
0, 1, 2, 3, 4+) and the confidence of its detections (ten bins from ``min_conf`` to 1). A class's
drift score is the sum of the two PSIs, ``sum((q - p) * ln(q / p))`` over the bins, with half
an observation added to every bin (``SMOOTHING``) so that a bin empty in a small sample does not
read as a large shift. The baseline is the first ``baseline_images`` images after
start, or a file written by ``yoloserve monitor baseline``. Only images whose request asked for
every class at a threshold no higher than ``min_conf`` count, and only their detections at or
above it, so that a user's sliders do not read as drift.

Recording happens in the batcher's worker threads (a lock guards the counts); a class past the
threshold is logged once per window (``window_images`` images).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.engine import Engine
    from service.engine.types import ModelMeta
    from service.settings import Settings

__all__ = ["COUNT_BINS", "SMOOTHING", "Baseline", "BaselineBuilder", "ClassHistograms", "DriftMonitor",
           "baseline_from_images", "monitor_from_settings", "psi"]

log = logging.getLogger("yoloserve.monitoring")

COUNT_BINS = 5  # objects of a class in one image: 0, 1, 2, 3, 4 or more
CONF_BINS = 10
SMOOTHING = 0.5
FORMAT = "yoloserve-baseline/1"


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two histograms of counts over the same bins (0 when either
    is empty)."""
    if sum(expected) <= 0 or sum(actual) <= 0:
        return 0.0
    e_total = sum(expected) + SMOOTHING * len(expected)
    a_total = sum(actual) + SMOOTHING * len(actual)
    score = 0.0
    for e, a in zip(expected, actual, strict=True):
        p, q = (e + SMOOTHING) / e_total, (a + SMOOTHING) / a_total
        score += (q - p) * math.log(q / p)
    return score


@dataclass
class ClassHistograms:
    """One class's two histograms (counts)."""

    per_image: list[int] = field(default_factory=lambda: [0] * COUNT_BINS)
    confidence: list[int] = field(default_factory=lambda: [0] * CONF_BINS)

    def add(self, other: ClassHistograms, sign: int = 1) -> None:
        for i, v in enumerate(other.per_image):
            self.per_image[i] += sign * v
        for i, v in enumerate(other.confidence):
            self.confidence[i] += sign * v

    def detections_per_image(self) -> float:
        images = sum(self.per_image)
        if images == 0:
            return 0.0
        # the last bin holds 4 or more: counted as 4, a lower bound
        return sum(i * n for i, n in enumerate(self.per_image)) / images

    def to_json(self) -> dict[str, list[int]]:
        return {"per_image": list(self.per_image), "confidence": list(self.confidence)}


def _conf_bin(confidence: float, min_conf: float) -> int:
    span = max(1e-9, 1.0 - min_conf)
    return min(CONF_BINS - 1, max(0, int((confidence - min_conf) / span * CONF_BINS)))


def image_histograms(detections: Iterable[tuple[int, float]], classes: Iterable[int],
                     min_conf: float) -> dict[int, ClassHistograms]:
    """The histograms of one image, from its ``(class_id, confidence)`` pairs."""
    out = {c: ClassHistograms() for c in classes}
    counts = dict.fromkeys(out, 0)
    for cls, conf in detections:
        if cls not in out or conf < min_conf:
            continue
        counts[cls] += 1
        out[cls].confidence[_conf_bin(conf, min_conf)] += 1
    for cls, n in counts.items():
        out[cls].per_image[min(n, COUNT_BINS - 1)] += 1
    return out


@dataclass
class Baseline:
    """Reference histograms per class, and how many images they came from."""

    classes: dict[int, str]
    histograms: dict[int, ClassHistograms]
    images: int
    min_conf: float
    model_version: str = ""
    source: str = "captured"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "model_version": self.model_version, "images": self.images,
            "min_conf": self.min_conf,
            "classes": {str(c): {"name": self.classes[c], **self.histograms[c].to_json()}
                        for c in sorted(self.classes)},
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Baseline:
        """Read a file written by ``save``; ``ValueError`` when it is not one."""
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"{path} is not a yoloserve baseline ({FORMAT})")
            classes = {int(k): str(v["name"]) for k, v in data["classes"].items()}
            hists = {int(k): ClassHistograms([int(n) for n in v["per_image"]],
                                             [int(n) for n in v["confidence"]])
                     for k, v in data["classes"].items()}
            if any(len(h.per_image) != COUNT_BINS or len(h.confidence) != CONF_BINS
                   for h in hists.values()):
                raise ValueError(f"{path}: histograms of the wrong size")
            return cls(classes, hists, int(data["images"]), float(data["min_conf"]),
                       str(data.get("model_version", "")), source=str(path))
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the baseline {path}: {exc}") from exc


class BaselineBuilder:
    """Adds images' histograms up into a baseline."""

    def __init__(self, classes: Mapping[int, str], min_conf: float) -> None:
        self.classes = dict(classes)
        self.min_conf = min_conf
        self.histograms = {c: ClassHistograms() for c in self.classes}
        self.images = 0

    def add(self, detections: Iterable[tuple[int, float]]) -> None:
        self.add_histograms(image_histograms(detections, self.classes, self.min_conf))

    def add_histograms(self, hists: Mapping[int, ClassHistograms]) -> None:
        for cls, hist in hists.items():
            self.histograms[cls].add(hist)
        self.images += 1

    def build(self, model_version: str = "", source: str = "captured") -> Baseline:
        return Baseline(self.classes, self.histograms, self.images, self.min_conf,
                        model_version, source)


class DriftMonitor:
    """The sliding window, the baseline, the scores and the once-per-window warning."""

    def __init__(self, classes: Mapping[int, str], *, window_images: int, baseline_images: int,
                 min_conf: float, threshold: float, min_window_images: int,
                 baseline: Baseline | None = None) -> None:
        self.classes = dict(classes)
        self.window_images = window_images
        self.min_window_images = min(min_window_images, window_images)
        self.threshold = threshold
        self.min_conf = baseline.min_conf if baseline is not None else min_conf
        self._builder = BaselineBuilder(classes, self.min_conf) if baseline is None else None
        self._baseline_images = baseline_images
        self.baseline = baseline
        self._window: deque[dict[int, ClassHistograms]] = deque()
        self._totals = {c: ClassHistograms() for c in self.classes}
        self._seen = 0  # images counted since start
        self._warned_at: dict[int, int] = {}  # class -> image count at its last warning
        self._scores: dict[int, float] = {}
        self._lock = threading.Lock()

    def counts(self, conf: float, classes: frozenset[int] | None) -> bool:
        """Whether a request with these parameters is representative (see the module's text)."""
        return classes is None and conf <= self.min_conf

    def record(self, images: Iterable[Iterable[tuple[int, float]]]) -> None:
        """Count a batch's images (``(class_id, confidence)`` pairs each); in a worker thread."""
        with self._lock:
            for detections in images:
                self._record_one(image_histograms(detections, self.classes, self.min_conf))
            if self.baseline is not None:
                self._score()

    def _record_one(self, hists: dict[int, ClassHistograms]) -> None:
        self._seen += 1
        if self._builder is not None:  # still capturing the baseline
            self._builder.add_histograms(hists)
            if self._builder.images >= self._baseline_images:
                self.baseline = self._builder.build()
                self._builder = None
                log.info("drift baseline captured", extra={"images": self.baseline.images})
            return
        self._window.append(hists)
        for cls, hist in hists.items():
            self._totals[cls].add(hist)
        if len(self._window) > self.window_images:
            for cls, hist in self._window.popleft().items():
                self._totals[cls].add(hist, sign=-1)

    def _score(self) -> None:
        assert self.baseline is not None
        if len(self._window) < self.min_window_images:
            return
        for cls, name in self.classes.items():
            base = self.baseline.histograms.get(cls)
            if base is None:
                continue
            now = self._totals[cls]
            score = psi(base.per_image, now.per_image)
            if sum(base.confidence) >= 10 and sum(now.confidence) >= 10:
                score += psi(base.confidence, now.confidence)
            self._scores[cls] = score
            last = self._warned_at.get(cls)
            if score > self.threshold and (last is None or self._seen - last >= self.window_images):
                self._warned_at[cls] = self._seen
                log.warning("model drift", extra={"class_name": name, "psi": round(score, 3),
                                                  "threshold": self.threshold,
                                                  "window_images": len(self._window)})

    def scores(self) -> dict[str, float]:
        """The latest drift score per class name (empty until the window holds enough images)."""
        with self._lock:
            return {self.classes[c]: s for c, s in self._scores.items()}

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows: the state, the threshold, and per class both histograms of
        the baseline and of the window, the detections per image and the score."""
        with self._lock:
            base = self.baseline
            state = ("capturing_baseline" if base is None
                     else "scoring" if len(self._window) >= self.min_window_images else "filling_window")
            per_class = []
            for cls, name in sorted(self.classes.items()):
                b = base.histograms.get(cls) if base is not None else None
                w = self._totals[cls]
                per_class.append({
                    "class_id": cls, "class_name": name, "score": self._scores.get(cls),
                    "baseline": {**b.to_json(), "rate": b.detections_per_image()} if b else None,
                    "window": {**w.to_json(), "rate": w.detections_per_image()},
                })
            building = self._builder.images if self._builder is not None else None
            return {
                "state": state, "threshold": self.threshold, "min_conf": self.min_conf,
                "window_images": len(self._window), "window_size": self.window_images,
                "baseline_images": base.images if base is not None else building,
                "baseline_target": self._baseline_images if base is None else base.images,
                "baseline_source": base.source if base is not None else None,
                "count_bins": ["0", "1", "2", "3", "4+"], "confidence_bins": CONF_BINS,
                "classes": per_class,
            }


def monitor_from_settings(settings: Settings, meta: ModelMeta) -> DriftMonitor | None:
    """The service's monitor (None when turned off); ``ValueError`` for a baseline file that cannot
    be read or that describes other classes."""
    if not settings.monitor_enabled:
        return None
    baseline = None
    if settings.monitor_baseline is not None:
        baseline = Baseline.load(settings.monitor_baseline)
        if baseline.classes != meta.classes:
            raise ValueError(f"the baseline {settings.monitor_baseline} describes other classes "
                             f"than the model's: {baseline.classes} != {meta.classes}")
        if baseline.model_version and baseline.model_version != meta.version:
            log.warning("the drift baseline was made with another model version",
                        extra={"baseline_version": baseline.model_version, "version": meta.version})
    return DriftMonitor(
        meta.classes, window_images=settings.monitor_window,
        baseline_images=settings.monitor_baseline_images, min_conf=settings.monitor_min_conf,
        threshold=settings.drift_threshold, min_window_images=settings.monitor_min_window,
        baseline=baseline,
    )


def baseline_from_images(engine: Engine, paths: Sequence[Path], min_conf: float,
                         batch_size: int = 8) -> Baseline:
    """Run ``paths`` through the engine (at ``min_conf``, every class) and count them up."""
    from service.engine.types import DetectParams

    builder = BaselineBuilder(engine.meta.classes, min_conf)
    params = DetectParams(conf=min_conf)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        prepared = [engine.prepare(p.read_bytes(), p.name) for p in chunk]
        out = engine.infer(prepared, [params] * len(prepared))
        for det in out.detections:
            builder.add((d.class_id, d.confidence) for d in det.items)
    return builder.build(engine.meta.version, source="file")
