"""The benchmarks' processes, on ``harness.procs``'s: the service and the balancer as the benchmark
programs run them (their output in ``bench/results/raw/logs/NAME.log``), and the naive baseline."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from harness.procs import LOGS, Balancer, Proc, Service, free_port

__all__ = ["lb", "naive", "service"]


def _log(name: str) -> Path:
    return LOGS / f"{name}.log"


def service(name: str, *args: str, env: dict[str, str] | None = None,
            checkout: Path | None = None) -> Service:
    """``yoloserve serve ARGS`` with the result cache off (identical images would be free), from
    ``checkout`` when given (another checkout of the project: ``harness.procs.Service``)."""
    return Service(name, *args, env={"YOLOSERVE_CACHE_ENABLED": "false", **(env or {})},
                   stdout=_log(name), checkout=checkout)


def lb(name: str, backends: Sequence[str], *args: str) -> Balancer:
    """``yoloserve lb`` in front of ``backends``, slow start off so that the run sees full weights."""
    flags = ["--slow-start-window", "0", "--no-access-log", "--log-level", "warning",
             "--health-interval", "0.5", "--healthy-threshold", "1"]
    return Balancer(name, backends, *flags, *args, cli=("yoloserve", "lb"), stdout=_log(name),
                    ready_timeout=120.0, poll_max=0.5)


def naive(name: str, model: Path, device: str | None = None) -> Proc:
    """The tutorial-style baseline under plain ``uvicorn`` (its defaults)."""
    port = free_port()
    env = {"NAIVE_MODEL": str(model)}
    if device:
        env["NAIVE_DEVICE"] = device
    cmd = [sys.executable, "-m", "uvicorn", "bench.baselines.naive_app:app",
           "--host", "127.0.0.1", "--port", str(port)]
    return Proc(name, cmd, port, ready_path="/docs", env=env, stdout=_log(name))
