"""The service as a real process on a loopback port, as the tests start it (``harness.procs`` holds
the parts the tests and the benchmarks share: free ports, waits with deadlines, processes)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Self

from harness.procs import ROOT, Service, free_port

__all__ = ["ROOT", "ServiceProcess"]


class ServiceProcess(Service):
    """``yoloserve serve ARGS`` on a free port (or ``port``), its output in ``log`` or nowhere;
    ``start`` waits until it is ready (90 s at most) unless told not to."""

    def __init__(self, *args: str, port: int | None = None, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        port = port or free_port()
        super().__init__(f"service :{port}", *args, port=port, env=env,
                         stdout=log or subprocess.DEVNULL, ready_timeout=90.0)

    def start(self, wait: bool = True) -> Self:
        return super().start(wait)
