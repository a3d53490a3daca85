"""The Open Inference Protocol v2 against a real service, spoken by other people's clients with
their code unchanged: Triton's ``tritonclient.http``, KServe's ``InferenceRESTClient`` and
Ultralytics' Triton client (``YOLO("http://host:port/NAME-raw")``)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import jpeg
from tests.support.procs import ServiceProcess

tritonclient_http = pytest.importorskip("tritonclient.http")
S = 256  # the demo model's input size
OUTPUTS = ("boxes", "scores", "classes", "num_detections")


@pytest.fixture(scope="module")
def served() -> Iterator[ServiceProcess]:
    env = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false"}
    args = ["--model", "demo=models/demo.onnx", "--max-wait-ms", "20",
            "--max-body-bytes", str(64 * 1024 * 1024)]
    with ServiceProcess(*args, env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def triton(served: ServiceProcess) -> Iterator[object]:
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{served.port}",
                                                     network_timeout=60.0)
    yield client
    client.close()


def _v1_boxes(served: ServiceProcess, image: bytes) -> list[list[float]]:
    result = httpx.post(served.url + "/v1/detect", files={"image": image}, timeout=60).json()
    return [[d["box_2d"][k] for k in ("x_min", "y_min", "x_max", "y_max")]
            for d in result["detections"]]


def _letterboxed(image: bytes) -> np.ndarray:
    """An image as the network reads it: letterboxed, RGB, 0-1, (1, 3, S, S)."""
    from service.engine import decode_image
    from service.engine.preprocess import letterbox

    canvas, _ = letterbox(decode_image(image), S)
    return np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1)[None], np.float32) / 255


def _onnx_output(batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession("models/demo.onnx", providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"images": batch})[0])


def test_tritonclient_health_and_metadata(triton: object, served: ServiceProcess) -> None:
    c = triton
    assert c.is_server_live() and c.is_server_ready()  # type: ignore[attr-defined]
    assert c.is_model_ready("demo") and c.is_model_ready("demo-raw")  # type: ignore[attr-defined]
    assert c.is_model_ready("demo", model_version="1")  # type: ignore[attr-defined]
    assert not c.is_model_ready("nope")  # type: ignore[attr-defined]
    server = c.get_server_metadata()  # type: ignore[attr-defined]
    assert server["name"] == "yoloserve" and "binary_tensor_data" in server["extensions"]
    meta = c.get_model_metadata("demo")  # type: ignore[attr-defined]
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUTS)
    raw = c.get_model_metadata("demo-raw")  # type: ignore[attr-defined]
    assert raw["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, S, S]}]
    assert raw["outputs"][0]["name"] == "output0"
    config = c.get_model_config("demo-raw")  # type: ignore[attr-defined]
    assert config["input"][0]["dims"] == [3, S, S] and "metadata" in config["parameters"]
    for path in ("/v2/models/nope", "/v2/models/demo/versions/9", "/v2/models/nope/infer"):
        method = httpx.post if path.endswith("infer") else httpx.get
        r = method(served.url + path, timeout=10)  # type: ignore[operator]
        assert r.status_code == 404 and isinstance(r.json()["error"], str), path


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_end_to_end_equals_v1(triton: object, served: ServiceProcess,
                                                 binary: bool) -> None:
    images = [jpeg(1), jpeg(2, (300, 420))]
    values = images if binary else [base64.b64encode(i) for i in images]
    inp = tritonclient_http.InferInput("IMAGE", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    outs = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
    result = triton.infer("demo", [inp], outputs=outs,  # type: ignore[attr-defined]
                          parameters={"max_det": 50})
    boxes, counts = result.as_numpy("boxes"), result.as_numpy("num_detections")
    assert boxes.shape == (2, 50, 4) and result.as_numpy("classes").dtype == np.int32
    for i, image in enumerate(images):
        expected = np.array(_v1_boxes(served, image)[:50], np.float32)
        assert counts[i] == len(expected) > 0
        assert np.abs(boxes[i, : counts[i]] - expected).max() <= 1.0
        assert not boxes[i, counts[i]:].any()  # padded with zeros, as EfficientNMS


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_raw_equals_the_network(triton: object, binary: bool) -> None:
    batch = np.concatenate([_letterboxed(jpeg(1)), _letterboxed(jpeg(6))])
    inp = tritonclient_http.InferInput("images", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=binary)
    out = tritonclient_http.InferRequestedOutput("output0", binary_data=binary)
    result = triton.infer("demo-raw", [inp], outputs=[out])  # type: ignore[attr-defined]
    got = result.as_numpy("output0")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _onnx_output(batch), atol=1e-3, rtol=1e-4)


_KSERVE_REST = """
import asyncio, base64, json, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

url, image, raw_path = sys.argv[1], base64.b64decode(sys.argv[2]), sys.argv[3]

async def run():
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        ready = [await client.is_server_live(url), await client.is_server_ready(url),
                 await client.is_model_ready(url, "demo")]
        found = InferInput("IMAGE", [1], "BYTES", [base64.b64encode(image).decode()])
        answer = await client.infer(url, InferRequest("demo", [found]), model_name="demo")
        outputs = {o.name: o.as_numpy().tolist() for o in answer.outputs}
        batch = np.load(raw_path)
        tensor = InferInput("images", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        answer = await client.infer(url, InferRequest("demo-raw", [tensor]), model_name="demo-raw")
        np.save(raw_path + ".out.npy", answer.outputs[0].as_numpy())
        return {"ready": ready, "outputs": outputs}
    finally:
        await client.close()

print(json.dumps(asyncio.run(run())))
"""


def test_kserve_rest_client(served: ServiceProcess, tmp_path: Path) -> None:
    """KServe's REST client, in a process of its own: its generated protocol buffers and
    tritonclient's (imported by other tests) cannot share one process."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("kserve") is None:  # not imported here: see above
        pytest.skip("kserve is not installed")
    batch = _letterboxed(jpeg(2))
    raw = tmp_path / "raw.npy"
    np.save(raw, batch)
    done = subprocess.run([sys.executable, "-c", _KSERVE_REST, served.url,
                           base64.b64encode(jpeg(1)).decode(), str(raw)],
                          capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ready"] == [True, True, True]
    outputs = {k: np.array(v) for k, v in result["outputs"].items()}
    expected = np.array(_v1_boxes(served, jpeg(1)), np.float32)
    n = int(outputs["num_detections"][0])
    assert n == len(expected)
    assert np.abs(outputs["boxes"][0][:n] - expected).max() <= 1.0
    np.testing.assert_allclose(np.load(str(raw) + ".out.npy"), _onnx_output(batch), atol=1e-3,
                               rtol=1e-4)


def test_ultralytics_triton_client_equals_local_onnx(served: ServiceProcess, tmp_path: Path) -> None:
    from ultralytics import YOLO

    path = tmp_path / "shapes.jpg"
    path.write_bytes(jpeg(4, (512, 384)))
    remote = YOLO(f"http://127.0.0.1:{served.port}/demo-raw", task="detect")
    # the input size comes from the served configuration's metadata; the local ONNX file has
    # dynamic axes and would run at Ultralytics' default 640, so it is told the model's size
    got = remote.predict(str(path), verbose=False)[0]
    want = YOLO("models/demo.onnx", task="detect").predict(str(path), imgsz=S, rect=False,
                                                     verbose=False)[0]
    assert len(got.boxes) == len(want.boxes) > 0
    assert got.names == want.names
    assert (got.boxes.cls == want.boxes.cls).all()
    assert float((got.boxes.xyxy - want.boxes.xyxy).abs().max()) <= 1.0


async def test_v1_and_v2_requests_share_forward_passes(served: ServiceProcess) -> None:
    images = [jpeg(i) for i in range(8)]

    def v2_body(image: bytes) -> dict[str, object]:
        return {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES",
                            "data": [base64.b64encode(image).decode()]}]}

    def mixed(text: str) -> float:
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "inference_batch_size_count" and s.labels.get("protocols") == "v1+v2")

    async with httpx.AsyncClient(base_url=served.url, timeout=60) as c:
        for _ in range(5):  # a few rounds at most: one mixed batch is enough
            sent = [c.post("/v1/detect", files={"image": img}) for img in images]
            sent += [c.post("/v2/models/demo/infer", json=v2_body(img)) for img in images]
            answers = await asyncio.gather(*sent)
            assert all(r.status_code == 200 for r in answers)
            if mixed((await c.get("/metrics")).text) > 0:
                break
        assert mixed((await c.get("/metrics")).text) > 0
        v1_sizes = [r.json()["processing_metadata"]["batch_size"] for r in answers[:8]]
        assert max(v1_sizes) > 1
