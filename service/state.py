"""What one service process holds while it runs: its lifecycle state and its parts."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.heap import GcPauses
    from service.inference import Inferencer
    from service.metrics import ServiceMetrics
    from service.ratelimit import RateLimiter
    from service.settings import Settings
    from service.streams import StreamRegistry

__all__ = ["AppState", "Lifecycle"]


class Lifecycle(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class AppState:
    settings: Settings
    metrics: ServiceMetrics
    rate_limiter: RateLimiter | None
    gc_pauses: GcPauses
    lifecycle: Lifecycle = Lifecycle.STARTING
    inferencer: Inferencer | None = None
    loading: asyncio.Task[None] | None = None
    streams: StreamRegistry | None = None
