"""Running one service process under uvicorn, with a SIGTERM that drains before it exits.

The signal handler only flips the state to ``draining`` (so ``/health/ready`` answers 503 and the
balancer stops sending) and lets uvicorn do the rest: stop accepting, finish in-flight requests
within ``drain_timeout_s``, then run the lifespan's shutdown, which drains the batcher.
"""

from __future__ import annotations

from types import FrameType

import uvicorn

from service.app import create_app
from service.httpguard import GuardedHttpProtocol
from service.runtime.state import AppState, Lifecycle
from service.settings import Settings
from wire.logs import configure_logging

__all__ = ["run"]


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._state.lifecycle is Lifecycle.READY:
            self._state.lifecycle = Lifecycle.DRAINING
        super().handle_exit(sig, frame)


def run(settings: Settings) -> None:
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="uvloop", http=GuardedHttpProtocol,
        log_config=None, access_log=False, timeout_graceful_shutdown=int(settings.drain_timeout_s),
        h11_max_incomplete_event_size=settings.max_header_bytes, timeout_keep_alive=30,
        backlog=2048,
    )
    _DrainingServer(config, app.state.yoloserve).run()
