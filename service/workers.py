"""Which worker process this is, under ``serve --workers N``: what the gunicorn master hands each
worker so that the workers can find one another (``service.runtime.streams.ownership``).

The master makes one folder per service and gives each worker a slot (0 to N-1; a worker started
again in place of a dead one takes its slot); a worker listens on ``worker-{slot}.sock`` there.
Read from the environment, set before the fork: these are not settings.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PEER_DIR_ENV", "WORKER_SLOT_ENV", "socket_path"]

PEER_DIR_ENV = "YOLOSERVE_INTERNAL_PEER_DIR"
WORKER_SLOT_ENV = "YOLOSERVE_INTERNAL_WORKER_SLOT"


def socket_path(folder: Path, slot: int) -> Path:
    return folder / f"worker-{slot}.sock"
