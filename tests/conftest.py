"""Shared fixtures: the demo model, generated images, real service processes on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DEMO_PT = MODELS / "demo.pt"
DEMO_ONNX = MODELS / "demo.onnx"


@pytest.fixture(scope="session")
def demo_pt() -> Path:
    assert DEMO_PT.is_file(), "models/demo.pt is missing: run `yoloserve train-demo`"
    return DEMO_PT


@pytest.fixture(scope="session")
def demo_onnx() -> Path:
    assert DEMO_ONNX.is_file(), "models/demo.onnx is missing: run `yoloserve train-demo`"
    return DEMO_ONNX
