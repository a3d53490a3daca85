"""Which precisions the hardware offers: refused at load with what is missing, preferred by speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.engine import Engine
from service.engine.precision import (
    CPU_FLAGS_ENV,
    Hardware,
    PrecisionUnavailable,
    detect_hardware,
    missing_for,
    precision_preference,
)

NO_UNITS = Hardware("Plain CPU", frozenset({"avx2", "fma"}))
ZEN4 = Hardware("AMD EPYC", frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}))
SAPPHIRE = Hardware("Intel Xeon", frozenset({"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                             "amx_int8", "amx_tile"}))
T4 = Hardware("x", frozenset(), "Tesla T4", (7, 5))
A100 = Hardware("x", frozenset(), "A100", (8, 0))


def test_fp32_runs_everywhere() -> None:
    for backend in ("torch", "onnx", "openvino"):
        assert missing_for("fp32", NO_UNITS, "cpu", backend) is None


def test_bf16_on_a_cpu_without_bf16_units_names_the_missing_flags() -> None:
    why = missing_for("bf16", NO_UNITS, "cpu", "openvino")
    assert why is not None and "amx_bf16" in why and "avx512_bf16" in why and "Plain CPU" in why


def test_bf16_needs_a_backend_that_runs_it_on_a_cpu() -> None:
    assert missing_for("bf16", ZEN4, "cpu", "openvino") is None
    assert missing_for("bf16", ZEN4, "cpu", "torch") is None
    why = missing_for("bf16", ZEN4, "cpu", "onnx")
    assert why is not None and "openvino" in why


def test_int8_needs_vnni_and_openvino() -> None:
    assert missing_for("int8", ZEN4, "cpu", "openvino") is None
    assert "avx512_vnni" in (missing_for("int8", NO_UNITS, "cpu", "openvino") or "")
    assert "openvino" in (missing_for("int8", ZEN4, "cpu", "onnx") or "")


def test_fp16_is_for_gpus() -> None:
    assert "CUDA" in (missing_for("fp16", SAPPHIRE, "cpu", "onnx") or "")
    assert missing_for("fp16", T4, "cuda:0", "torch") is None
    assert missing_for("fp16", T4, "cuda:0", "onnx") is None


def test_bf16_on_cuda_needs_ampere() -> None:
    assert "8.0" in (missing_for("bf16", T4, "cuda:0", "torch") or "")
    assert missing_for("bf16", A100, "cuda:0", "torch") is None
    assert "none is visible" in (missing_for("fp16", NO_UNITS, "cuda:0", "torch") or "")


def test_preference_puts_the_fastest_first_and_fp32_last() -> None:
    assert precision_preference(SAPPHIRE, "cpu")[0] == "bf16"
    assert precision_preference(ZEN4, "cpu")[0] == "int8"
    assert precision_preference(A100, "cuda:0")[0] == "fp16"
    for hw in (SAPPHIRE, ZEN4, NO_UNITS):
        assert precision_preference(hw, "cpu")[-1] == "fp32"


def test_cpu_flags_come_from_cpuinfo_or_the_override(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 amx_bf16\n")
    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    hw = detect_hardware("cpu", str(info))
    assert hw.cpu_model == "Test CPU 9000" and "amx_bf16" in hw.cpu_flags
    assert hw.describe() == "Test CPU 9000 (amx_bf16 avx2)"
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2")
    assert "amx_bf16" not in detect_hardware("cpu", str(info)).cpu_flags


def test_loading_bf16_where_the_cpu_lacks_it_is_refused(demo_pt: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2 fma")
    with pytest.raises(PrecisionUnavailable, match="avx512_bf16"):
        Engine.load(demo_pt, backend="openvino", device="cpu", precision="bf16")
    with pytest.raises(PrecisionUnavailable, match="CUDA"):
        Engine.load(demo_pt, device="cpu", precision="fp16")


def test_half_is_fp16(demo_pt: Path) -> None:
    with pytest.raises(PrecisionUnavailable, match="fp16"):
        Engine.load(demo_pt, backend="onnx", device="cpu", half=True)
