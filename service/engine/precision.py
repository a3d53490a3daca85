"""Which numeric precisions the hardware at hand offers, and which one a model is served at.

A precision is refused at start when the device lacks the units for it, with a message naming
what is missing: bf16 needs AMX or AVX512-BF16 on a CPU (``amx_bf16``, ``avx512_bf16`` in
``/proc/cpuinfo``) or compute capability 8.0 on CUDA; fp16 needs CUDA (or AMX-FP16 with
OpenVINO); int8 needs VNNI (``avx512_vnni``, ``avx_vnni``, ``amx_int8``) and a quantized model.

``YOLOSERVE_CPU_FLAGS`` replaces the flags read from ``/proc/cpuinfo`` (space-separated): for
containers whose ``/proc`` hides them, and to try the fallbacks on a CPU that has them.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from service.engine.errors import ModelLoadError

__all__ = [
    "CPU_FLAGS_ENV",
    "MATRIX_FLAGS",
    "Hardware",
    "Precision",
    "PrecisionChoice",
    "PrecisionUnavailable",
    "detect_hardware",
    "missing_for",
    "precision_preference",
]

Precision = Literal["fp32", "fp16", "bf16", "int8"]
PrecisionChoice = Literal["fp32", "fp16", "bf16", "int8", "auto"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

CPU_FLAGS_ENV = "YOLOSERVE_CPU_FLAGS"
MATRIX_FLAGS = ("amx_bf16", "amx_int8", "amx_fp16", "avx512_bf16", "avx512_vnni", "avx_vnni",
                "avx512_fp16", "avx512f", "avx2")
"""The flags that decide precisions, named in every benchmark report."""

_BF16_CPU = ("amx_bf16", "avx512_bf16")
_INT8_CPU = ("amx_int8", "avx512_vnni", "avx_vnni")
_FP16_CPU = ("amx_fp16",)


class PrecisionUnavailable(ModelLoadError):
    """The precision asked for cannot run on this device or backend."""


@dataclass(frozen=True)
class Hardware:
    """The CPU (model name and flags) and, when there is one, the CUDA device."""

    cpu_model: str
    cpu_flags: frozenset[str]
    cuda_name: str | None = None
    cuda_capability: tuple[int, int] | None = None

    @property
    def matrix_flags(self) -> list[str]:
        return [f for f in MATRIX_FLAGS if f in self.cpu_flags]

    def describe(self) -> str:
        """``AMD EPYC (avx512_bf16 avx512_vnni ...)``: what every benchmark report names."""
        flags = " ".join(self.matrix_flags) or "no bf16/int8 matrix flags"
        return f"{self.cpu_model} ({flags})"


def _read_cpuinfo(path: Path) -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        text = path.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in {"", platform.machine(), platform.processor()}:
            model = value.strip()
        elif key in {"flags", "Features"} and not flags:
            flags = frozenset(value.split())
    return model, flags


@lru_cache(maxsize=4)
def _cpu(path: str, override: str | None) -> tuple[str, frozenset[str]]:
    model, flags = _read_cpuinfo(Path(path))
    if override is not None:
        flags = frozenset(override.split())
    return model, flags


def detect_hardware(device: str = "cpu", cpuinfo: str = "/proc/cpuinfo") -> Hardware:
    """The CPU's model and flags, and the CUDA device's name and capability when ``device`` is one."""
    model, flags = _cpu(cpuinfo, os.environ.get(CPU_FLAGS_ENV))
    if not device.startswith("cuda"):
        return Hardware(model, flags)
    import torch

    index = int(device.split(":")[1]) if ":" in device else 0
    if not torch.cuda.is_available():
        return Hardware(model, flags)
    cap = torch.cuda.get_device_capability(index)
    return Hardware(model, flags, torch.cuda.get_device_name(index), (int(cap[0]), int(cap[1])))


def _cpu_has(hw: Hardware, wanted: tuple[str, ...], what: str) -> str | None:
    if any(f in hw.cpu_flags for f in wanted):
        return None
    return (f"{what} on a CPU needs {' or '.join(wanted)} in /proc/cpuinfo; this CPU "
            f"({hw.cpu_model}) has none of them")


def missing_for(precision: Precision, hw: Hardware, device: str, backend: str) -> str | None:
    """Why ``precision`` cannot run on ``device`` with ``backend``; ``None`` when it can."""
    on_cuda = device.startswith("cuda")
    if precision == "fp32":
        return None
    if on_cuda and hw.cuda_name is None:
        return f"{precision} on {device} needs a CUDA device, and none is visible"
    if precision == "fp16":
        if on_cuda:
            return None if backend in {"torch", "onnx"} else (
                "fp16 on CUDA runs on --backend torch or onnx")
        if backend != "openvino" or not any(f in hw.cpu_flags for f in _FP16_CPU):
            return (f"fp16 needs a CUDA GPU, or amx_fp16 with --backend openvino; this CPU "
                    f"({hw.cpu_model}) has no fp16 units: use bf16 or fp32")
        return None
    if precision == "bf16":
        if on_cuda:
            cap = hw.cuda_capability or (0, 0)
            if backend != "torch":
                return "bf16 on CUDA runs on --backend torch"
            return None if cap >= (8, 0) else (
                f"bf16 on CUDA needs compute capability 8.0 (Ampere) or later; {hw.cuda_name} "
                f"has {cap[0]}.{cap[1]}")
        if backend not in {"openvino", "torch"}:
            return "bf16 on a CPU runs on --backend openvino (or torch), not ONNX Runtime"
        return _cpu_has(hw, _BF16_CPU, "bf16")
    # int8
    if on_cuda:
        return "int8 runs on CPUs, from an OpenVINO model quantized by `yoloserve export`"
    if backend != "openvino":
        return "int8 runs on --backend openvino, from a model quantized by `yoloserve export`"
    return _cpu_has(hw, _INT8_CPU, "int8")


def precision_preference(hw: Hardware, device: str) -> list[Precision]:
    """Precisions from the fastest expected on this hardware to fp32, which is always last.

    On CPUs with AMX, bf16 runs on the tile units as fast as int8 with the detection head kept in
    higher precision, and loses less; without AMX (AVX512-BF16 and VNNI, as on AMD Zen 4), int8
    runs faster than bf16 (bench/README.md, "Precision").
    """
    if device.startswith("cuda"):
        return ["fp16", "bf16", "fp32"]
    if "amx_bf16" in hw.cpu_flags:
        return ["bf16", "int8", "fp16", "fp32"]
    return ["int8", "bf16", "fp16", "fp32"]
