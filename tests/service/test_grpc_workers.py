"""``--workers 2 --grpc-port P``: every worker process listens on the gRPC port (SO_REUSEPORT), new
connections are spread over them by the kernel, and the calls are counted in the metrics the
workers share."""

from __future__ import annotations

import time

import grpc
import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.procs import free_port
from service.api.grpc.proto import grpc_service_pb2 as pb
from service.api.grpc.proto import grpc_service_pb2_grpc
from tests.service.conftest import jpeg
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow


def _listeners(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}


def _grpc_calls(url: str) -> float:
    families = text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text)
    return sum(s.value for f in families for s in f.samples
               if s.name == "grpc_requests_total" and s.labels.get("method") == "ModelInfer"
               and s.labels.get("code") == "OK")


def test_two_workers_each_listen_on_the_grpc_port_and_answer() -> None:
    port = free_port()
    env = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false"}
    with ServiceProcess("--model", "demo=models/demo.onnx", "--workers", "2", "--grpc-port",
                        str(port), env=env) as proc:
        deadline = time.monotonic() + 60
        while len(listeners := _listeners(port)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # workers start one after the other: poll until both listen
        assert len(listeners) == 2, listeners
        assert proc.pid not in listeners  # the workers, not the master, hold the port

        request = pb.ModelInferRequest(model_name="demo")
        request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            jpeg(1))
        answered = 0
        for _ in range(12):  # a new channel (a new connection) each time: the kernel spreads them
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
                reply = stub.ModelInfer(request, timeout=60, wait_for_ready=True)
                assert [o.name for o in reply.outputs][:2] == ["boxes", "scores"]
                answered += 1
        assert answered == 12
        deadline = time.monotonic() + 30
        while (counted := _grpc_calls(proc.url)) < 12 and time.monotonic() < deadline:
            time.sleep(0.2)  # a worker's counts reach the shared files as it records them
        assert counted == 12
