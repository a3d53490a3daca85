"""gunicorn settings for ``yoloserve serve --workers N``: uvicorn workers, one model per worker.

The model is loaded in each worker after the fork (no preload): CUDA and thread pools do not
survive a fork. Prometheus multiprocess mode lets one scrape of /metrics cover every worker.
"""

import os
import shutil
import tempfile
from typing import Any, ClassVar

from service.settings import Settings

_settings = Settings()

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="yoloserve-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers



def _worker_class() -> type:
    """uvicorn's worker with the service's bounded HTTP protocol (see service/httpproto.py)."""
    from uvicorn.workers import UvicornWorker

    from service.httpproto import LimitedHttpToolsProtocol

    class Worker(UvicornWorker):
        CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
            "loop": "auto", "http": LimitedHttpToolsProtocol,
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
    from service.logs import configure_logging

    configure_logging(_settings.log_format, _settings.log_level)


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    shutil.rmtree(_metrics_dir, ignore_errors=True)
