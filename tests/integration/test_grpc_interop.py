"""The Open Inference Protocol over gRPC against a real service, spoken by other people's clients
with their code unchanged (each in its own process: ``tritonclient.grpc`` and KServe's client
register the same protobuf package and cannot share one), and by grpcio with our generated stubs:
answers equal ``/v1``'s, status codes from the error table, health and reflection."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.procs import free_port
from service.api.grpc.proto import grpc_service_pb2 as pb
from service.api.grpc.proto import grpc_service_pb2_grpc
from tests.service.conftest import jpeg
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow
pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServiceProcess, int]]:
    port = free_port()
    env = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false"}
    with ServiceProcess("--model", "demo=models/demo.onnx", "--grpc-port", str(port),
                        env=env) as proc:
        yield proc, port


def _run(code: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=120, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _v1_boxes(url: str, image: bytes) -> list[list[float]]:
    result = httpx.post(url + "/v1/detect", files={"image": image}, timeout=60).json()
    return [[d["box_2d"][k] for k in ("x_min", "y_min", "x_max", "y_max")]
            for d in result["detections"]]


def test_tritonclient_grpc_detects_as_v1(served: tuple[ServiceProcess, int], tmp_path) -> None:
    proc, port = served
    image = jpeg(0)
    path = tmp_path / "i.jpg"
    path.write_bytes(image)
    got = _run(f"""
        import json, numpy as np, tritonclient.grpc as tg
        c = tg.InferenceServerClient("127.0.0.1:{port}")
        i = tg.InferInput("IMAGE", [1], "BYTES")
        i.set_data_from_numpy(np.array([open("{path}", "rb").read()], dtype=object))
        r = c.infer("demo", [i])
        n = int(r.as_numpy("num_detections")[0])
        print(json.dumps({{"live": c.is_server_live(), "ready": c.is_model_ready("demo"),
                          "boxes": r.as_numpy("boxes")[0, :n].tolist()}}))
    """)
    assert got["live"] and got["ready"]
    expected = _v1_boxes(proc.url, image)
    np.testing.assert_allclose(np.array(got["boxes"]).reshape(-1, 4),
                               np.array(expected).reshape(-1, 4), atol=0.05)


def test_kserve_grpc_client_and_ultralytics(served: tuple[ServiceProcess, int]) -> None:
    _, port = served
    got = _run(f"""
        import asyncio, json, numpy as np
        from kserve import InferenceGRPCClient, InferRequest, InferInput
        async def main():
            c = InferenceGRPCClient("127.0.0.1:{port}")
            x = InferInput("images", [1, 3, 256, 256], "FP32")
            x.set_data_from_numpy(np.zeros((1, 3, 256, 256), np.float32))
            r = await c.infer(InferRequest(model_name="demo-raw", infer_inputs=[x]))
            await c.close()
            return list(r.outputs[0].as_numpy().shape)
        print(json.dumps({{"shape": asyncio.run(main())}}))
    """)
    assert got["shape"][0] == 1
    yolo = _run(f"""
        import json, numpy as np
        from ultralytics import YOLO
        m = YOLO("grpc://127.0.0.1:{port}/demo-raw", task="detect")
        r = m(np.zeros((256, 256, 3), np.uint8), imgsz=256, verbose=False)
        print(json.dumps({{"names": len(r[0].names)}}))
    """)
    assert yolo["names"] == 5


def test_status_codes_health_stream_and_reflection(served: tuple[ServiceProcess, int]) -> None:
    _, port = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="nope")
        request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=30)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        request.model_name = "demo"
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=30)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert dict(caught.value.trailing_metadata())["yoloserve-error-code"] == "invalid_image"
        good = pb.ModelInferRequest(model_name="demo", id="s1")
        good.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(jpeg(0))
        answers = list(stub.ModelStreamInfer(iter([good, request, good]), timeout=60))
        assert [a.infer_response.id or a.error_message[:3] for a in answers] == ["s1", "the", "s1"]
        typed = answers[0].infer_response
        assert [o.name for o in typed.outputs][:2] == ["boxes", "scores"]
        assert typed.outputs[0].contents.fp32_contents  # typed contents in, typed contents out
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert "inference.GRPCInferenceService" in services
