"""What one service process holds while it runs: its lifecycle state and its parts."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.heap import GcPauses
    from service.metrics import ServiceMetrics
    from service.ratelimit import RateLimiter
    from service.runtime.inferencer import Inferencer
    from service.runtime.registry import ModelRegistry
    from service.runtime.streams import StreamRegistry
    from service.settings import Settings
    from service.shared import SharedRateLimiter, SharedStore

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
    rate_limiter: RateLimiter | SharedRateLimiter | None
    gc_pauses: GcPauses
    lifecycle: Lifecycle = Lifecycle.STARTING
    models: ModelRegistry | None = None  # every model served, and the device they share
    loading: asyncio.Task[None] | None = None
    streams: StreamRegistry | None = None
    shared_store: SharedStore | None = None  # Redis, when configured

    @property
    def inferencer(self) -> Inferencer | None:
        """The default model's, once the models are loaded."""
        return None if self.models is None else self.models.default_model.inferencer

    @property
    def overloaded(self) -> bool:
        return self.models is not None and self.models.admission.overloaded
