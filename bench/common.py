"""Shared helpers of the benchmark programs: machine description, saving JSON + markdown + plots."""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "hardware", "machine", "markdown_table", "rate", "save"]

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def hardware(device: str = "cpu") -> str:
    """The CPU with the flags that decide precisions (``service.engine.precision``), and on a CUDA
    device also its name: ``AMD EPYC (avx512_bf16 avx512_vnni avx512f avx2)``."""
    from service.engine.precision import detect_hardware  # imports the engine: only when saving

    hw = detect_hardware(device)
    return hw.describe() + (f"; GPU: {hw.cuda_name}" if hw.cuda_name else "")


def rate(fn: Callable[[], object], n: int, seconds: float, streams: int = 1) -> float:
    """Images/s of ``streams`` threads each calling ``fn`` (``n`` images a call) in a loop for
    ``seconds``, after one warm-up call."""
    fn()
    counts = [0] * streams
    start = time.perf_counter()

    def loop(i: int) -> None:
        while time.perf_counter() - start < seconds:
            fn()
            counts[i] += n

    if streams == 1:
        loop(0)
    else:
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(counts) / (time.perf_counter() - start)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save(name: str, data: dict[str, Any], table: str, title: str) -> Path:
    """Write ``results/NAME.json`` and ``results/NAME.md``; return the markdown path. Both name the
    machine and its hardware (``data["device"]``, when it names a CUDA device, adds the GPU)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = data.get("device")
    data = {"machine": machine(),
            "hardware": hardware(device if isinstance(device, str) else "cpu"), **data}
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    md = RESULTS / f"{name}.md"
    m = data["machine"]
    md.write_text(f"# {title}\n\nCPU: {data['hardware']}\n\nMachine: {m['cpu']}, {m['cores']} cores"
                  f"{', ' + m['gpu'] if 'gpu' in m else ''}; {m['when']}.\n\n{table}\n")
    return md


def add_serving_options(ap: argparse.ArgumentParser, who: str = "the service's") -> None:
    """``--precision``, ``--letterbox`` and ``--decode-reduce``, passed on to ``yoloserve serve``
    (unset: the service's default)."""
    ap.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16", "int8", "auto"],
                    help=f"{who} --precision [the service's default]")
    ap.add_argument("--letterbox", default=None, choices=["square", "rect"],
                    help=f"{who} --letterbox [the service's default]")
    ap.add_argument("--decode-reduce", action=argparse.BooleanOptionalAction, default=None,
                    help=f"{who} --decode-reduce [the service's default]")


def serving_flags(args: argparse.Namespace) -> list[str]:
    """The ``yoloserve serve`` flags of :func:`add_serving_options` that were set."""
    out: list[str] = []
    if args.precision is not None:
        out += ["--precision", args.precision]
    if args.letterbox is not None:
        out += ["--letterbox", args.letterbox]
    if args.decode_reduce is not None:
        out.append("--decode-reduce" if args.decode_reduce else "--no-decode-reduce")
    return out
