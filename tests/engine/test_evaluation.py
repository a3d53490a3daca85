"""``yoloserve evaluate``: mAP as Ultralytics' validator measures it, agreement with FP32, storage."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from service.demo.synthetic import CLASSES, write_split
from service.engine.evaluation import (
    DatasetError,
    EvalRow,
    Evaluation,
    entry_for,
    evaluate,
    evaluation_path,
    load_dataset,
    load_evaluation,
    match_predictions,
    save,
)
from service.engine.precision import detect_hardware, missing_for
from service.evaluate_cmd import evaluate_command

IMAGES = 32


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's held-out split (seed 1), small."""
    root = tmp_path_factory.mktemp("heldout")
    write_split(root, "val", 1, IMAGES)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, demo_pt: Path, demo_onnx: Path) -> Path:
    """A copy of the demo model (with its ONNX sibling), so evaluations are written aside."""
    folder = tmp_path_factory.mktemp("model")
    shutil.copyfile(demo_onnx, folder / "demo.onnx")
    return Path(shutil.copyfile(demo_pt, folder / "demo.pt"))


@pytest.fixture(scope="module")
def evaluation(model: Path, split: Path) -> Evaluation:
    return evaluate(model, split, ["fp32", "bf16", "int8"])


def _row(evaluation: Evaluation, precision: str) -> EvalRow:
    return next(r for r in evaluation.rows if r.precision == precision)


@pytest.mark.slow
def test_fp32_agrees_with_itself(evaluation: Evaluation) -> None:
    fp32 = evaluation.rows[0]
    assert (fp32.precision, fp32.backend, fp32.letterbox) == ("fp32", "onnx", "square")
    assert fp32.total > IMAGES and fp32.matched == fp32.total and fp32.agreement == 1.0
    assert fp32.delta_map50_95 == 0.0
    assert fp32.images == evaluation.images == IMAGES and fp32.images_per_s > 0


@pytest.mark.slow
def test_map_matches_ultralytics_validator(evaluation: Evaluation, demo_pt: Path, split: Path) -> None:
    from ultralytics import YOLO  # type: ignore[attr-defined]

    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    data = split / "data.yaml"
    data.write_text(f"path: {split}\ntrain: images/val\nval: images/val\nnames:\n{names}\n")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = YOLO(str(demo_pt), task="detect").val(
            data=str(data), imgsz=256, batch=8, device="cpu", plots=False, verbose=False,
            project=tmp, name="val").box
    fp32 = evaluation.rows[0]
    assert fp32.map50_95 > 0.6
    assert abs(fp32.map50 - float(theirs.map50)) <= 0.02
    assert abs(fp32.map50_95 - float(theirs.map)) <= 0.02


@pytest.mark.slow
def test_bf16_keeps_the_fp32_boxes(evaluation: Evaluation) -> None:
    why = missing_for("bf16", detect_hardware(), "cpu", "openvino")
    if why is not None:
        pytest.skip(why)
    bf16 = _row(evaluation, "bf16")
    assert bf16.skipped is None and bf16.backend == "openvino"
    assert bf16.total == evaluation.rows[0].total
    assert bf16.agreement >= 0.98
    assert abs(bf16.delta_map50_95) < 1.0


@pytest.mark.slow
def test_a_precision_that_cannot_load_is_skipped(evaluation: Evaluation) -> None:
    int8 = _row(evaluation, "int8")  # no quantized IR beside the copy
    assert int8.skipped is not None and "int8" in int8.skipped
    assert "openvino/int8/square" not in evaluation.entries()


def test_match_predictions_is_ultralytics(tmp_path: Path) -> None:
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator

    validator = DetectionValidator(save_dir=tmp_path)
    rng = np.random.default_rng(0)
    for _ in range(50):
        targets, preds = int(rng.integers(1, 8)), int(rng.integers(1, 12))
        true_cls = rng.integers(0, 3, targets)
        pred_cls = rng.integers(0, 3, preds)
        iou = rng.uniform(0.3, 1.0, (targets, preds)).astype(np.float32)
        theirs = validator.match_predictions(torch.from_numpy(pred_cls), torch.from_numpy(true_cls),
                                             torch.from_numpy(iou)).numpy()
        assert (match_predictions(pred_cls, true_cls, iou.astype(np.float64)) == theirs).all()


def test_labels_found_as_ultralytics_does(tmp_path: Path) -> None:
    write_split(tmp_path, "val", 1, 3)
    (tmp_path / "labels" / "val" / "00001.txt").unlink()
    beside = tmp_path / "extra" / "a.png"
    beside.parent.mkdir()
    shutil.copyfile(tmp_path / "images" / "val" / "00000.jpg", beside)
    beside.with_suffix(".txt").write_text("2 0.5 0.5 0.2 0.4\n\n")
    dataset = {p.path.name: p for p in load_dataset(tmp_path)}
    assert sorted(dataset) == ["00000.jpg", "00001.jpg", "00002.jpg", "a.png"]
    assert len(dataset["00000.jpg"].classes) > 0
    assert dataset["00001.jpg"].classes.shape == (0,) and dataset["00001.jpg"].boxes.shape == (0, 4)
    assert dataset["a.png"].classes.tolist() == [2]
    assert np.allclose(dataset["a.png"].boxes, [[0.4, 0.3, 0.6, 0.7]])
    beside.with_suffix(".txt").write_text("2 0.5 0.5\n")
    with pytest.raises(DatasetError, match=r"a\.txt:1"):
        load_dataset(tmp_path)


def _evaluation(version: str, *rows: EvalRow) -> Evaluation:
    return Evaluation("m.pt", version, "val", 10, "CPU (avx2)", "2025-01-01T00:00:00+00:00", list(rows))


def test_save_merges_and_entry_for_finds(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    fp32 = EvalRow("onnx", "fp32", "square", 0.9, 0.7, 0.0, 10, 10, 1.0, 10, 50.0)
    bf16 = EvalRow("openvino", "bf16", "square", 0.9, 0.69, -1.0, 9, 10, 0.9, 10, 80.0)
    torch_bf16 = EvalRow("torch", "bf16", "square", 0.9, 0.68, -2.0, 9, 10, 0.9, 10, 20.0)
    int8 = EvalRow("openvino", "int8", "square", skipped="no int8 model")
    assert save(_evaluation("v1", fp32, bf16, int8), model) == evaluation_path(model)
    save(_evaluation("v1", fp32, torch_bf16), model)
    doc = load_evaluation(model)
    assert doc is not None and doc["version"] == "v1"
    assert sorted(doc["entries"]) == ["onnx/fp32/square", "openvino/bf16/square", "torch/bf16/square"]
    entry = entry_for(model, "bf16")
    assert entry is not None and entry["backend"] == "openvino" and entry["fp32_map50_95"] == 0.7
    assert entry["delta_map50_95"] == -1.0 and entry["cpu"] == "CPU (avx2)"
    assert entry_for(model, "bf16", backend="torch")["map50_95"] == 0.68  # type: ignore[index]
    assert entry_for(model, "int8") is None and entry_for(model, "bf16", "rect") is None
    # the ONNX sibling and the IR folder beside the weights read the same file
    ir = tmp_path / "m_openvino_model" / "m.xml"
    assert load_evaluation(tmp_path / "m.onnx") == load_evaluation(ir) == doc
    # new weights: entries measured on the old ones are dropped
    save(_evaluation("v2", fp32), model)
    assert sorted(json.loads(evaluation_path(model).read_text())["entries"]) == ["onnx/fp32/square"]


@pytest.mark.slow
def test_cli_writes_the_evaluation(model: Path, split: Path) -> None:
    result = CliRunner().invoke(evaluate_command, ["--model", str(model), "--data", str(split),
                                                   "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "| onnx | fp32 | square |" in result.output
    doc = json.loads(evaluation_path(model).read_text())
    assert doc["entries"]["onnx/fp32/square"]["images"] == IMAGES
    assert f"saved to {evaluation_path(model)}" in result.output


@pytest.mark.slow
def test_cli_generates_the_demo_split(model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "demo.pt"
    shutil.copyfile(model, copy)
    result = CliRunner().invoke(evaluate_command, ["--model", str(copy), "--precision", "fp32",
                                                   "--images", "8", "--no-save"])
    assert result.exit_code == 0, result.output
    assert "on demo-heldout-seed1: 8 images" in result.output
    assert "| torch | fp32 | square |" in result.output
    assert not evaluation_path(copy).exists()
