"""What the runtime answers for one image, before any protocol renders it.

The detections stay the engine's full-precision arrays; timings are plain milliseconds. ``/v1``
rounds them into its JSON, ``/v2`` packs the arrays into tensors, streams hand them to the tracker:
each front renders a ``Result`` once, and the runtime knows nothing of any wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from service.engine.types import Detections, DetectParams

__all__ = ["Result", "Timings"]


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent on one image, by stage (zeros for a cached answer but ``total``)."""

    queue: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Result:
    detections: Detections
    name: str  # the image's name, as the caller gave it
    model: str
    version: str
    params: DetectParams
    batch_size: int
    timings: Timings
    cached: bool = False

    def with_detections(self, detections: Detections) -> Result:
        return replace(self, detections=detections)
