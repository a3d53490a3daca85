"""gunicorn settings for ``yoloserve serve --workers N``: uvicorn workers, one model per worker.

Loaded as ``gunicorn -c python:service.gunicorn_conf`` (see ``service.resources.gunicorn_config``),
so an installed copy finds it; the checkout's ``gunicorn.conf.py`` re-exports it.

The model is loaded in each worker after the fork (no preload): CUDA and thread pools do not
survive a fork. Prometheus multiprocess mode lets one scrape of /metrics cover every worker.

Streams: each worker gets a slot (0 to N-1; a replacement takes the dead worker's) and listens on
a socket of its slot in a folder made here (``service.workers``), where the other workers find it
and hand it the frames of the streams it owns; a dead worker's socket is removed when it is reaped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from service.settings import Settings
from service.workers import PEER_DIR_ENV, WORKER_SLOT_ENV, socket_path

__all__ = [
    "accesslog", "bind", "child_exit", "graceful_timeout", "keepalive", "limit_request_field_size",
    "on_exit", "on_starting", "post_fork", "pre_fork", "preload_app", "timeout", "worker_class",
    "workers",
]

_settings = Settings()

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="yoloserve-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
_peer_dir = tempfile.mkdtemp(prefix="yoloserve-workers-")  # this master's, inherited by its workers
os.environ[PEER_DIR_ENV] = _peer_dir
_SLOT = "yoloserve_slot"  # the attribute of a gunicorn worker object that holds its slot

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers


def _worker_class() -> type:
    """uvicorn's worker with the service's bounded HTTP protocol (see service/httpguard.py)."""
    from uvicorn.workers import UvicornWorker

    from service.httpguard import GuardedHttpProtocol

    class Worker(UvicornWorker):
        CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (an instance variable on UvicornWorker)
            "loop": "auto", "http": GuardedHttpProtocol,
            "h11_max_incomplete_event_size": _settings.max_header_bytes,
        }

    return Worker


worker_class = _worker_class()
preload_app = False
graceful_timeout = int(_settings.drain_timeout_s) + 5
timeout = 120  # model loading and warm-up happen in the worker
keepalive = 30
limit_request_field_size = _settings.max_header_bytes
accesslog = None


def on_starting(server: object) -> None:
    from wire.logs import configure_logging

    configure_logging(_settings.log_format, _settings.log_level)


def pre_fork(server: Any, worker: Any) -> None:
    """In the master: the lowest slot no live worker holds (the new worker is not listed yet)."""
    taken = {getattr(w, _SLOT, None) for w in server.WORKERS.values()}
    setattr(worker, _SLOT, next(slot for slot in range(len(taken) + 1) if slot not in taken))


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker, before the app starts."""
    os.environ[WORKER_SLOT_ENV] = str(getattr(worker, _SLOT))


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined,no-untyped-call]
    slot = getattr(worker, _SLOT, None)
    if slot is not None:  # its streams' other workers stop calling it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(Path(_peer_dir), slot))


def on_exit(server: object) -> None:
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    shutil.rmtree(_peer_dir, ignore_errors=True)
