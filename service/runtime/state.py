"""What one service process holds while it runs: its lifecycle state and its parts."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
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

__all__ = ["AppState", "Lifecycle", "LifecycleWatcher"]


class Lifecycle(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


LifecycleWatcher = Callable[[Lifecycle], None]


@dataclass
class AppState:
    """``lifecycle`` tells each change to its watchers (:meth:`watch`) as it is made, so that a
    front can push it (gRPC health's ``Watch``) instead of polling for it."""

    settings: Settings
    metrics: ServiceMetrics
    rate_limiter: RateLimiter | SharedRateLimiter | None
    gc_pauses: GcPauses
    models: ModelRegistry | None = None  # every model served, and the device they share
    loading: asyncio.Task[None] | None = None
    streams: StreamRegistry | None = None
    shared_store: SharedStore | None = None  # Redis, when configured
    _lifecycle: Lifecycle = field(default=Lifecycle.STARTING, init=False, repr=False)
    _watchers: list[LifecycleWatcher] = field(default_factory=list, init=False, repr=False)

    @property
    def lifecycle(self) -> Lifecycle:
        return self._lifecycle

    @lifecycle.setter
    def lifecycle(self, value: Lifecycle) -> None:
        """Each watcher is called at once, in the setter's thread and context (a signal
        handler's, for SIGTERM's draining): it should only hand the change to its loop."""
        if value is self._lifecycle:
            return
        self._lifecycle = value
        for watcher in tuple(self._watchers):
            watcher(value)

    def watch(self, watcher: LifecycleWatcher) -> Callable[[], None]:
        """Call ``watcher(lifecycle)`` on every change from now on; returns what stops it."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher)

    @property
    def inferencer(self) -> Inferencer | None:
        """The default model's, once the models are loaded."""
        return None if self.models is None else self.models.default_model.inferencer

    @property
    def overloaded(self) -> bool:
        return self.models is not None and self.models.admission.overloaded
