"""``--precision``: what ``/v1/model`` reports, and how ``auto`` chooses from stored evaluations."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from service.engine.evaluation import EvalRow, Evaluation, save
from service.engine.precision import CPU_FLAGS_ENV
from service.runtime.compute import plan_compute
from service.settings import Settings
from tests.service.conftest import app_client

ZEN4 = "avx2 avx512f avx512_bf16 avx512_vnni"


@pytest.fixture
def model(tmp_path: Path, demo_pt: Path) -> Path:
    """The demo model in a folder of its own, with a stored evaluation: bf16 within the budget,
    int8 over it."""
    for f in ("demo.pt", "demo.onnx"):
        shutil.copyfile(demo_pt.parent / f, tmp_path / f)
    shutil.copytree(demo_pt.parent / "demo_int8_openvino_model",
                    tmp_path / "demo_int8_openvino_model")
    ev = Evaluation(model="demo", version="test", data="held-out", images=300, cpu="test CPU",
                    date="2026-12-06", rows=[
                        EvalRow("onnx", "fp32", "square", 0.93, 0.76, 0.0, 100, 100, 1.0, 300),
                        EvalRow("openvino", "bf16", "square", 0.93, 0.759, -0.1, 99, 100, 0.99, 300),
                        EvalRow("openvino", "int8", "square", 0.92, 0.74, -2.0, 95, 100, 0.95, 300),
                    ])
    save(ev, tmp_path / "demo.pt")
    return tmp_path / "demo.pt"


def test_auto_takes_the_fastest_precision_within_the_budget(model: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, ZEN4)  # int8 is the faster there, but over the budget
    plan = plan_compute(Settings(model=model, device="cpu", precision="auto"))
    assert (plan.precision, plan.backend) == ("bf16", "openvino")
    assert plan.why is not None and "int8" in plan.why and "budget" in plan.why
    plan = plan_compute(Settings(model=model, device="cpu", precision="auto", accuracy_budget=3))
    assert (plan.precision, plan.backend) == ("int8", "openvino")


def test_auto_without_an_evaluation_serves_fp32_and_says_which_command(
        tmp_path: Path, demo_pt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, ZEN4)
    for f in ("demo.pt", "demo.onnx"):
        shutil.copyfile(demo_pt.parent / f, tmp_path / f)
    plan = plan_compute(Settings(model=tmp_path / "demo.pt", device="cpu", precision="auto"))
    assert plan.precision == "fp32" and plan.backend == "onnx"
    assert plan.why is not None and "yoloserve evaluate" in plan.why


async def test_auto_on_a_cpu_without_bf16_units_serves_fp32_and_logs_why(
        model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2 fma")
    caplog.set_level(logging.INFO, logger="yoloserve")
    async with app_client(model=model, precision="auto", cache_enabled=False) as client:
        info = (await client.get("/v1/model")).json()
    assert (info["backend"], info["precision"]) == ("onnx", "fp32")
    lines = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert len(lines) == 1 and "serving fp32" in lines[0]
    assert "avx512_bf16" in lines[0] and "avx512_vnni" in lines[0]


async def test_v1_model_reports_backend_precision_and_the_stored_evaluation(
        model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, ZEN4)
    async with app_client(model=model, precision="bf16", cache_enabled=False) as client:
        info = (await client.get("/v1/model")).json()
        many = (await client.get("/v1/models")).json()
    assert (info["backend"], info["precision"], info["letterbox"]) == ("openvino", "bf16", "square")
    ev = info["evaluation"]
    assert ev["precision"] == "bf16" and ev["map50_95"] == pytest.approx(0.759)
    assert ev["fp32_map50_95"] == pytest.approx(0.76) and ev["box_agreement"] == pytest.approx(0.99)
    assert many["models"][0]["evaluation"] == ev


def test_a_precision_the_cpu_lacks_stops_the_start(model: Path) -> None:
    """Refused before the port opens, with what is missing named."""
    import os
    import subprocess
    import sys

    env = {**os.environ, CPU_FLAGS_ENV: "avx2"}
    run = subprocess.run([sys.executable, "-m", "yoloserve", "serve", "--model", str(model),
                          "--precision", "bf16", "--port", "0"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    assert "amx_bf16 or avx512_bf16" in run.stderr
