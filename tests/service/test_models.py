"""Several models in one process: each with its own classes, addressed by name or through an
alias that splits traffic by weight; the client's ``model=``; start-up refusals."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients import AsyncDetectionClient, InvalidRequest
from service.cli import _model_flags
from service.modelspec import ModelConfigError, parse_alias, parse_spec, resolve_specs
from service.runtime.registry import WeightedPicker
from service.settings import Settings
from tests.service.conftest import jpeg
from tests.support.procs import ROOT, ServiceProcess

SHAPES = {0: "ring", 1: "box", 2: "wedge", 3: "spark", 4: "honeycomb"}


def renamed_checkpoint(source: Path, out: Path) -> Path:
    """A copy of the demo checkpoint whose classes have other names."""
    import torch

    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    for key in ("model", "ema"):
        if ckpt.get(key) is not None:
            ckpt[key].names = dict(SHAPES)
    torch.save(ckpt, out)
    return out


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, demo_pt: Path
               ) -> Iterator[ServiceProcess]:
    other = renamed_checkpoint(demo_pt, tmp_path_factory.mktemp("models") / "renamed.pt")
    args = ["--model", "demo=models/demo.onnx", "--model", f"shapes={other}",
            "--model-alias", "canary=demo:90,shapes:10", "--max-batch-size", "4"]
    with ServiceProcess(*args, env={"YOLOSERVE_ACCESS_LOG": "false"}) as proc:
        yield proc


# -- parsing, and the alias picker ---------------------------------------------------------------

def test_model_flags_and_specs() -> None:
    assert _model_flags(("models/demo.onnx",)) == {"model": Path("models/demo.onnx")}
    assert _model_flags(("a=x.pt", "y.onnx")) == {"models": ["a=x.pt", "y.onnx"]}
    assert parse_spec("models/demo.pt") == parse_spec("demo=models/demo.pt")
    settings = Settings(models=["first=models/demo.onnx", "models/demo.pt"])
    assert settings.model == Path("models/demo.onnx")  # the default model's path
    specs, aliases = resolve_specs(settings.model, settings.models, ["prod=first:3,demo:1"])
    assert [s.name for s in specs] == ["first", "demo"]
    assert aliases["prod"].targets == (("first", 3.0), ("demo", 1.0))
    for bad in (["a=models/demo.pt", "a=models/demo.onnx"], ["x-raw=models/demo.pt"]):
        with pytest.raises(ModelConfigError):
            resolve_specs(Path("unused"), bad, [])
    with pytest.raises(ModelConfigError, match="not served"):
        resolve_specs(Path("models/demo.pt"), [], ["prod=demo:1,other:1"])
    with pytest.raises(ModelConfigError):
        parse_alias("prod=demo:0")


def test_a_90_10_alias_splits_2000_requests_within_3_points() -> None:
    alias = parse_alias("prod=demo:90,demo2:10")
    picker = WeightedPicker(alias.targets, random.Random(20261203))
    counts = Counter(picker.pick() for _ in range(2000))
    assert abs(counts["demo"] / 2000 - 0.90) <= 0.03
    assert abs(counts["demo2"] / 2000 - 0.10) <= 0.03


def test_a_missing_model_path_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pt"
    done = subprocess.run(
        [sys.executable, "-m", "yoloserve", "serve", "--model", "demo=models/demo.onnx",
         "--model", f"other={missing}", "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert f"model 'other': no file at {missing}" in done.stderr


# -- a real process with two models ---------------------------------------------------------------


def test_each_model_answers_with_its_own_classes(two_models: ServiceProcess) -> None:
    img = jpeg(3)
    with httpx.Client(base_url=two_models.url, timeout=60) as c:
        listed = c.get("/v1/models").json()
        assert [m["name"] for m in listed["models"]] == ["demo", "shapes"]
        assert listed["default"] == "demo"
        assert listed["aliases"] == {"canary": {"demo": 90.0, "shapes": 10.0}}
        assert c.get("/v1/models/shapes").json()["classes"] == {str(k): v for k, v in SHAPES.items()}
        assert c.get("/v1/model").json()["name"] == "demo"
        default = c.post("/v1/detect", files={"image": img}).json()
        demo = c.post("/v1/models/demo/detect", files={"image": img}).json()
        shapes = c.post("/v1/models/shapes/detect", files={"image": img}).json()
        batch = c.post("/v1/models/shapes/detect/batch",
                       files=[("images", img), ("images", jpeg(4))]).json()
        annotated = c.post("/v1/models/shapes/annotate", files={"image": img})
        missing = c.post("/v1/models/nope/detect", files={"image": img})
        metrics = c.get("/metrics").text
    assert default["detections"] == demo["detections"] and demo["detection_count"] > 0
    assert default["processing_metadata"]["model_name"] == "demo"
    assert shapes["processing_metadata"]["model_name"] == "shapes"
    assert {d["class_name"] for d in demo["detections"]} <= {"circle", "square", "triangle",
                                                             "star", "hexagon"}
    assert {d["class_name"] for d in shapes["detections"]} <= set(SHAPES.values())
    # the same weights: the same boxes under other names (torch here, ONNX Runtime there)
    for a, b in zip(demo["detections"], shapes["detections"], strict=True):
        assert SHAPES[a["class_id"]] == b["class_name"]
        assert all(abs(a["box_2d"][k] - b["box_2d"][k]) <= 1.0 for k in a["box_2d"])
    assert all(r["processing_metadata"]["model_name"] == "shapes" for r in batch["results"])
    assert annotated.status_code == 200 and annotated.content[:2] == b"\xff\xd8"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    labelled = {s.labels.get("model") for f in text_string_to_metric_families(metrics)
                for s in f.samples if s.name == "inference_batch_size_count"}
    assert {"demo", "shapes"} <= labelled


async def test_the_alias_splits_real_requests_and_the_client_names_models(
        two_models: ServiceProcess) -> None:
    img = jpeg(5)
    async with AsyncDetectionClient(two_models.url, model="canary", timeout=60) as client:
        seen = Counter()
        for _ in range(200):  # the result cache makes repeats cheap; the pick is per request
            result = await client.detect(img)
            seen[result.processing_metadata.model_name] += 1
        assert 0.80 <= seen["demo"] / 200 <= 0.98 and seen["shapes"] > 0
        shapes = await client.detect(img, model="shapes")
        assert shapes.processing_metadata.model_name == "shapes"
        info = await client.model_info(model="shapes")
        assert info.classes == {str(k): v for k, v in SHAPES.items()}
        listed = await client.list_models()
        assert [m.name for m in listed.models] == ["demo", "shapes"]
        with pytest.raises(InvalidRequest) as err:
            await client.detect(img, model="nope")
        assert err.value.code == "model_not_found"


def _metric(text: str, name: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name)


def test_every_model_and_raw_twin_share_the_devices_slots(two_models: ServiceProcess) -> None:
    """Two models and their ``-raw`` networks under load at once: the passes running together
    never exceed the process's slots (one compute plan), and every kind of request is served."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    raw = np.random.default_rng(0).random((2, 3, 256, 256), dtype=np.float32)  # the demo's input
    head = b'{"inputs":[{"name":"images","shape":[2,3,256,256],"datatype":"FP32",' \
           b'"parameters":{"binary_data_size":%d}}]}' % raw.nbytes

    def v1(model: str) -> int:
        with httpx.Client(base_url=two_models.url, timeout=60) as c:
            return sum(c.post(f"/v1/models/{model}/detect",
                              files={"image": jpeg(i)}).status_code == 200 for i in range(6))

    def v2(model: str) -> int:
        with httpx.Client(base_url=two_models.url, timeout=60) as c:
            return sum(c.post(f"/v2/models/{model}-raw/infer", content=head + raw.tobytes(),
                              headers={"Inference-Header-Content-Length": str(len(head))}
                              ).status_code == 200 for _ in range(3))

    calls = [(v1, "demo")] * 4 + [(v1, "shapes")] * 4 + [(v2, "demo"), (v2, "shapes")] * 2
    with ThreadPoolExecutor(len(calls)) as pool:
        served = list(pool.map(lambda call: call[0](call[1]), calls))
    assert served == [6] * 8 + [3] * 4
    text = httpx.get(f"{two_models.url}/metrics").text
    slots, peak = _metric(text, "device_slots"), _metric(text, "device_passes_peak")
    assert slots >= 1 and 1 <= peak <= slots
