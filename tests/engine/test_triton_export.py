"""``yoloserve export --format triton``: a model repository that Triton's own model-configuration
protobuf (shipped in tritonclient) parses, and that matches the ONNX file it sits beside."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner

from service.cli import export_command


def _model_config_module() -> Any:
    """Triton's ``model_config_pb2``, loaded from its file alone: importing it through the
    ``tritonclient.grpc`` package would also register Triton's copy of the v2 gRPC messages, whose
    names KServe's client (tested in the same process) registers again, and protobuf refuses the
    second."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or spec.origin is None:
        pytest.skip("tritonclient is not installed")
    path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


model_config_pb2 = _model_config_module()
text_format = pytest.importorskip("google.protobuf.text_format")

_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def _export(out: Path, *flags: str) -> object:
    done = CliRunner().invoke(export_command, ["--model", "models/demo.onnx", "--format", "triton",
                                               "--out", str(out), *flags])
    assert done.exit_code == 0, done.output
    config = model_config_pb2.ModelConfig()
    text_format.Parse((out / "demo" / "config.pbtxt").read_text(), config)
    return config


def _check_against_onnx(config: object, onnx_path: Path) -> None:
    graph = onnx.load(str(onnx_path)).graph
    for declared, tensors in ((config.input, graph.input), (config.output, graph.output)):  # type: ignore[attr-defined]
        assert [t.name for t in declared] == [t.name for t in tensors]
        for d, t in zip(declared, tensors, strict=True):
            assert model_config_pb2.DataType.Name(d.data_type) == _TYPES[t.type.tensor_type.elem_type]
            dims = t.type.tensor_type.shape.dim
            assert dims[0].HasField("dim_param"), f"{t.name}: the batch axis is not dynamic"
            assert len(d.dims) == len(dims) - 1  # Triton's dims leave the batch axis out
            for want, dim in zip(d.dims, dims[1:], strict=True):
                assert dim.HasField("dim_param") or dim.dim_value == want


def test_triton_repository_for_the_demo_model(tmp_path: Path) -> None:
    config = _export(tmp_path, "--max-batch-size", "16", "--max-wait-ms", "2", "--instances", "2")
    assert config.name == "demo" and config.platform == "onnxruntime_onnx"  # type: ignore[attr-defined]
    assert config.max_batch_size == 16  # type: ignore[attr-defined]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000  # type: ignore[attr-defined]
    group = config.instance_group[0]  # type: ignore[attr-defined]
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert list(config.input[0].dims) == [3, 256, 256]  # type: ignore[attr-defined]
    assert "'names'" in config.parameters["metadata"].string_value  # type: ignore[attr-defined]
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator  # type: ignore[attr-defined]
    _check_against_onnx(config, tmp_path / "demo" / "1" / "model.onnx")


def test_tensorrt_fp16_block_for_gpus(tmp_path: Path) -> None:
    config = _export(tmp_path, "--tensorrt-fp16")
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator  # type: ignore[attr-defined]
    assert [a.name for a in accel] == ["tensorrt"]
    assert accel[0].parameters["precision_mode"] == "FP16"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU  # type: ignore[attr-defined]


def test_the_end_to_end_form_has_a_valid_configuration_too() -> None:
    from service.engine.triton import detect_config, to_pbtxt

    served = detect_config("demo", input_size=256, names={0: "circle"}, max_batch_size=8,
                           max_wait_ms=5.0)
    config = text_format.Parse(to_pbtxt(served), model_config_pb2.ModelConfig())
    assert [t.name for t in config.input] == ["IMAGE"]
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_STRING"
    assert [t.name for t in config.output] == ["boxes", "scores", "classes", "num_detections"]
    assert list(config.output[0].dims) == [-1, 4]
