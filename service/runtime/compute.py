"""How one service process spends its CPU cores on forward passes.

ONNX Runtime on a CPU runs fastest, per core, as several single-threaded forward passes at once
rather than one pass spread over every core: a pass split across threads waits at every
operator for its slowest thread, and on a machine that also decodes images and serves HTTP some
thread is always being preempted. Both the forward pass alone and the served throughput
measured higher that way; see ``bench/README.md`` ("CPU compute plan"). So by default
a CPU process with ONNX Runtime runs one single-threaded pass per core (like OpenVINO's streams
or Triton's CPU model instances, sharing one session), and so does OpenVINO (one stream per
pass); everything else runs one pass at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from service.engine.backends import resolve_device
from service.engine.engine import choose_backend
from service.engine.errors import ModelLoadError
from service.engine.evaluation import entry_for, variant
from service.engine.precision import detect_hardware, missing_for, precision_preference
from service.settings import Settings

__all__ = ["ComputePlan", "decode_threads", "plan_compute", "resolve_precision", "shared_plan"]

BackendKind = Literal["torch", "onnx", "openvino"]


@dataclass(frozen=True)
class ComputePlan:
    backend: BackendKind
    device: str  # cpu or cuda:N
    concurrent_batches: int  # forward passes in flight at once
    threads: int  # intra-op threads of one forward pass on a CPU (ONNX Runtime, OpenVINO)
    precision: str = "fp32"
    why: str | None = None  # what --precision auto passed over, and why


def _stored_loss(model: Path, precision: str, letterbox: str) -> float | None:
    """Points of mAP50-95 lost against FP32 in the model's stored evaluation (negative: gained),
    if there is one."""
    entry = entry_for(model, precision, letterbox)
    if entry is None or entry.get("delta_map50_95") is None:
        return None
    return -float(entry["delta_map50_95"])


def resolve_precision(settings: Settings, model: Path, device: str) -> tuple[str, str | None]:
    """The precision to serve at, and for ``auto`` why faster ones were passed over.

    ``auto`` takes the fastest precision this hardware has whose stored evaluation (``yoloserve
    evaluate``) is within ``accuracy_budget`` points of mAP50-95 of FP32; else FP32.
    """
    if settings.precision != "auto":
        return settings.precision, None
    hw = detect_hardware(device)
    passed: list[str] = []
    for precision in precision_preference(hw, device):
        if precision == "fp32":
            break
        try:
            kind, _ = choose_backend(model, settings.backend, device, precision)
        except ModelLoadError as exc:
            passed.append(f"{precision}: {exc}")
            continue
        missing = missing_for(precision, hw, device, kind)
        if missing is not None:
            passed.append(f"{precision}: {missing}")
            continue
        loss = _stored_loss(model, precision, variant(settings.letterbox, settings.decode_reduce))
        if loss is None:
            how = (" --letterbox rect" if settings.letterbox == "rect" else "") + (
                " --decode-reduce" if settings.decode_reduce else "")
            passed.append(f"{precision}: no stored evaluation; run `yoloserve evaluate --model "
                          f"{model} --precision {precision}{how}`")
        elif loss > settings.accuracy_budget:
            passed.append(f"{precision}: loses {loss:.2f} points of mAP50-95, over the budget "
                          f"of {settings.accuracy_budget:g}")
        else:
            return precision, "; ".join(passed) or None
    return "fp32", "; ".join(passed) or "no faster precision on this hardware"


def plan_compute(settings: Settings, model: Path | None = None) -> ComputePlan:
    """The settings' choices, with ``None`` (automatic) resolved for this machine and ``model``
    (the settings' default model when not given)."""
    device = resolve_device(settings.device)
    path = model or settings.model
    precision, why = resolve_precision(settings, path, device)
    chosen, _ = choose_backend(path, settings.backend, device, precision)
    backend: BackendKind = "onnx" if chosen == "onnx" else (
        "openvino" if chosen == "openvino" else "torch")
    cores = settings.cores or os.cpu_count() or 1
    streams = backend in {"onnx", "openvino"} and device == "cpu"
    concurrent = settings.max_concurrent_batches or (cores if streams else 1)
    threads = settings.threads or max(1, cores // concurrent)
    return ComputePlan(backend, device, concurrent, threads, precision, why)


def shared_plan(settings: Settings, plans: list[ComputePlan]) -> list[ComputePlan]:
    """The plans of the models one process serves, on one device: every model keeps its backend
    and precision, and takes the first (default) model's slots, and the threads per pass that
    the cores give each slot. Each model planning over every core would run its passes on top of
    the others' (bench/README.md, "One device")."""
    slots = plans[0].concurrent_batches
    cores = settings.cores or os.cpu_count() or 1
    threads = settings.threads or max(1, cores // slots)
    return [replace(p, concurrent_batches=slots, threads=threads) for p in plans]


def decode_threads(settings: Settings) -> int:
    """Threads that decode and letterbox: as set, else one per core of this process (at least
    two, so that a large image does not hold up the small ones behind it). More threads than
    cores only contend with the forward passes: at bf16 on 2 cores, 2 threads served 4 % more
    than 4 (bench/README.md, "Decode threads")."""
    return settings.preprocess_threads or max(2, settings.cores or os.cpu_count() or 1)
