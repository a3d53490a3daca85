"""How one service process spends its CPU cores on forward passes.

ONNX Runtime on a CPU runs fastest, per core, as several single-threaded forward passes at once
rather than one pass spread over every core: a pass split across threads waits at every
operator for its slowest thread, and on a machine that also decodes images and serves HTTP some
thread is always being preempted. Both the forward pass alone and the served throughput
measured higher that way; see ``bench/README.md`` ("CPU compute plan"). So by default
a CPU process with ONNX Runtime runs one single-threaded pass per core (like OpenVINO's streams
or Triton's CPU model instances, sharing one session), and everything else one pass at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.engine.backends import resolve_device
from service.engine.engine import choose_backend
from service.settings import Settings

__all__ = ["ComputePlan", "plan_compute"]


@dataclass(frozen=True)
class ComputePlan:
    backend: Literal["torch", "onnx"]
    device: str  # cpu or cuda:N
    concurrent_batches: int  # forward passes in flight at once
    threads: int  # ONNX Runtime intra-op threads of one forward pass on a CPU


def plan_compute(settings: Settings, model: Path | None = None) -> ComputePlan:
    """The settings' choices, with ``None`` (automatic) resolved for this machine and ``model``
    (the settings' default model when not given)."""
    device = resolve_device(settings.device)
    chosen, _ = choose_backend(model or settings.model, settings.backend, device)
    backend: Literal["torch", "onnx"] = "onnx" if chosen == "onnx" else "torch"
    cores = settings.cores or os.cpu_count() or 1
    streams = backend == "onnx" and device == "cpu"
    concurrent = settings.max_concurrent_batches or (cores if streams else 1)
    threads = settings.threads or max(1, cores // concurrent)
    return ComputePlan(backend, device, concurrent, threads)
