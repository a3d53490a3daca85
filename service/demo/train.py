"""Train the demo model: YOLOv8n from ``yolov8n.yaml`` on the synthetic shapes data set, on the CPU.

Run as ``yoloserve train-demo [--out models/]``. The data set is generated under a work directory
(never committed), the best checkpoint is copied to ``OUT/demo.pt``, exported to ``OUT/demo.onnx``
with a dynamic batch axis, and the model card ``OUT/README.md`` is written with the measured mAP.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from service.demo.synthetic import CLASSES, write_dataset

__all__ = ["TrainConfig", "train_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    out: Path = Path("models")
    workdir: Path = Path("build/demo")
    train_images: int = 1500
    val_images: int = 300
    imgsz: int = 256
    epochs: int = 60
    batch: int = 16
    hours: float = 0.72  # hard cap on training time; Ultralytics fits the epochs into it
    lr0: float = 0.002
    mosaic: float = 0.0  # off: the time cap allows few epochs, and plain images converge faster
    seed: int = 0


def _train(cfg: TrainConfig, data: Path) -> Path:
    from ultralytics import YOLO  # type: ignore[attr-defined]

    model = YOLO("yolov8n.yaml")
    model.train(
        data=str(data), imgsz=cfg.imgsz, epochs=cfg.epochs, batch=cfg.batch, device="cpu",
        workers=2, plots=False, time=cfg.hours, seed=cfg.seed, deterministic=True,
        project=str(cfg.workdir.resolve() / "runs"), name="train", exist_ok=True,
        patience=100, amp=False, verbose=False, cache="ram", warmup_epochs=1,
        mosaic=cfg.mosaic, close_mosaic=0, optimizer="AdamW", lr0=cfg.lr0, val=False,
    )
    weights = cfg.workdir.resolve() / "runs" / "train" / "weights"
    return weights / "best.pt" if (weights / "best.pt").exists() else weights / "last.pt"


def _evaluate(weights: Path, data: Path, imgsz: int) -> dict[str, float]:
    from ultralytics import YOLO  # type: ignore[attr-defined]

    metrics = YOLO(str(weights)).val(
        data=str(data), split="val", imgsz=imgsz, batch=16, device="cpu", plots=False,
        project=str(weights.parent.parent / "val"), name="val", exist_ok=True, verbose=False,
    )
    return {"map50": float(metrics.box.map50), "map50_95": float(metrics.box.map)}


def _export(weights: Path, out: Path) -> Path:
    from service.engine.export import export_onnx

    return export_onnx(weights, out / "demo.onnx")


def _model_card(cfg: TrainConfig, metrics: dict[str, float], minutes: float) -> str:
    classes = "\n".join(f"| {i} | {n} |" for i, n in enumerate(CLASSES))
    return f"""# The demo model

`demo.pt` is an Ultralytics YOLOv8n checkpoint trained from scratch (`yolov8n.yaml`, no
pre-trained weights) on a synthetic data set of coloured shapes on noisy, textured backgrounds
that `yoloserve train-demo` generates. `demo.onnx` is the same model exported to ONNX (opset 17,
dynamic batch axis, simplified). Both carry their class names and input size in their metadata.

| field | value |
|---|---|
| architecture | YOLOv8n ({len(CLASSES)} classes) |
| input size | {cfg.imgsz} × {cfg.imgsz} (square letterbox) |
| training split | {cfg.train_images} images, seed {cfg.seed}, sides 192–719 px |
| held-out split | {cfg.val_images} images, seed {cfg.seed + 1} (never seen in training) |
| mAP50 (held-out) | {metrics["map50"]:.3f} |
| mAP50-95 (held-out) | {metrics["map50_95"]:.3f} |
| training time | {minutes:.1f} min on a 2-core CPU |

## Classes
| id | name |
|---|---|
{classes}

## Reproduce
```bash
yoloserve train-demo --out models/
```
Settings: `{json.dumps({k: str(v) for k, v in asdict(cfg).items()})}`.
The images are a pure function of (seed, index), so the data set is the same on every machine;
training on another CPU may differ slightly in its last digits.

## Limits
It knows only these five shapes. It exists so that the service, its tests and its benchmarks
run with no download; for real work, serve your own weights with `--model`.
"""


def train_demo(cfg: TrainConfig) -> dict[str, float]:
    """Generate the data, train, evaluate on the held-out split, export and write the model card."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    started = time.monotonic()
    cfg.out.mkdir(parents=True, exist_ok=True)
    data = write_dataset(
        cfg.workdir / "data", train=cfg.train_images, val=cfg.val_images,
        train_seed=cfg.seed, val_seed=cfg.seed + 1,
    )
    best = _train(cfg, data)
    minutes = (time.monotonic() - started) / 60
    shutil.copyfile(best, cfg.out / "demo.pt")
    metrics = _evaluate(cfg.out / "demo.pt", data, cfg.imgsz)
    _export(cfg.out / "demo.pt", cfg.out)
    (cfg.out / "README.md").write_text(_model_card(cfg, metrics, minutes))
    log.info("demo model written to %s: %s", cfg.out, metrics)
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(train_demo(TrainConfig()))
