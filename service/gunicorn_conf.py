"""gunicorn settings for ``yoloserve serve --workers N``: uvicorn workers, one model per worker.

Loaded as ``gunicorn -c python:service.gunicorn_conf`` (see ``service.resources.gunicorn_config``),
so an installed copy finds it; the checkout's ``gunicorn.conf.py`` re-exports it.

The model is loaded in each worker after the fork (no preload): CUDA and thread pools do not
survive a fork. Prometheus multiprocess mode lets one scrape of /metrics cover every worker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from service.settings import Settings

__all__ = [
    "accesslog", "bind", "child_exit", "graceful_timeout", "keepalive", "limit_request_field_size",
    "on_exit", "on_starting", "preload_app", "timeout", "worker_class", "workers",
]

_settings = Settings()

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="yoloserve-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]

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


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined,no-untyped-call]


def on_exit(server: object) -> None:
    shutil.rmtree(_metrics_dir, ignore_errors=True)
