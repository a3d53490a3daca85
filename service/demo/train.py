"""Train the demo models: YOLOv8n (``yolov8n.yaml``, ``yolov8n-seg.yaml``, ...) on the synthetic shapes
data set, one per Ultralytics task, on the CPU.

Run as ``yoloserve train-demo [--task detect|segment|pose|obb|classify] [--out models/]``. The data
set is generated under a work directory (never committed), the best checkpoint is copied to
``OUT/demo.pt`` (``demo-seg.pt``, ``demo-pose.pt``, ``demo-obb.pt``, ``demo-cls.pt``), exported to
ONNX beside it with a dynamic batch axis, and its model card is written with the accuracy measured
on the held-out split (``OUT/README.md`` for the detector, ``OUT/demo-seg.md`` and so on).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from service.demo.synthetic import CLASSES
from service.demo.tasks import KEYPOINTS, Task, write_task_dataset

__all__ = ["SUFFIX", "TrainConfig", "task_config", "train_demo"]

SUFFIX: dict[str, str] = {"detect": "", "segment": "-seg", "pose": "-pose", "obb": "-obb",
                          "classify": "-cls"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    task: Task = "detect"
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
    # more of Ultralytics' train arguments: the classifier's augmentation is gentler (its default
    # random erasing and RandAugment over a tiny data set of one shape each: it learnt nothing)
    extra: tuple[tuple[str, object], ...] = ()

    @property
    def stem(self) -> str:
        return "demo" + SUFFIX[self.task]


def task_config(task: Task, **overrides: object) -> TrainConfig:
    """The settings each task's demo is trained with: small enough for an hour on a 2-core CPU
    (the detector keeps its own, longer run)."""
    quick: dict[str, object] = {} if task == "detect" else {
        "train_images": 800, "val_images": 200, "imgsz": 160, "epochs": 30, "hours": 0.3,
        "workdir": Path(f"build/demo{SUFFIX[task]}")}
    if task == "classify":
        quick.update(imgsz=64, batch=32, epochs=60, hours=0.15,
                     extra=(("erasing", 0.0), ("auto_augment", None), ("scale", 0.1)))
    return replace(TrainConfig(task=task), **{**quick, **overrides})  # type: ignore[arg-type]


def _train(cfg: TrainConfig, data: Path) -> Path:
    from ultralytics import YOLO  # type: ignore[attr-defined]

    model = YOLO(f"yolov8n{SUFFIX[cfg.task]}.yaml")
    model.train(
        data=str(data), imgsz=cfg.imgsz, epochs=cfg.epochs, batch=cfg.batch, device="cpu",
        workers=2, plots=False, time=cfg.hours, seed=cfg.seed, deterministic=True,
        project=str(cfg.workdir.resolve() / "runs"), name="train", exist_ok=True,
        patience=100, amp=False, verbose=False, cache="ram", warmup_epochs=1,
        mosaic=cfg.mosaic, close_mosaic=0, optimizer="AdamW", lr0=cfg.lr0, val=False,
        **dict(cfg.extra),
    )
    weights = cfg.workdir.resolve() / "runs" / "train" / "weights"
    return weights / "best.pt" if (weights / "best.pt").exists() else weights / "last.pt"


def _evaluate(weights: Path, data: Path, imgsz: int, task: Task, workdir: Path
              ) -> dict[str, float]:
    from ultralytics import YOLO  # type: ignore[attr-defined]

    metrics = YOLO(str(weights)).val(
        data=str(data), split="val", imgsz=imgsz, batch=16, device="cpu", plots=False,
        project=str(workdir.resolve() / "val"), name="val", exist_ok=True, verbose=False,
    )
    if task == "classify":
        return {"top1": float(metrics.top1), "top5": float(metrics.top5)}
    found = {"segment": "seg", "pose": "pose"}.get(task, "box")
    part = getattr(metrics, found)
    return {"map50": float(part.map50), "map50_95": float(part.map)}


def _export(weights: Path, out: Path) -> Path:
    from service.engine.export import export_onnx

    return export_onnx(weights, out.with_suffix(".onnx"))


_WHAT = {
    "detect": "boxes",
    "segment": "boxes and the pixels of each shape (its outline as the mask)",
    "pose": "boxes and four keypoints per shape: its extreme points in the image's axes, "
            + ", ".join(f"{i} {k}" for i, k in enumerate(KEYPOINTS)),
    "obb": "oriented boxes: each shape's minimum-area rotated rectangle",
    "classify": "one label per image (each image shows one shape)",
}


_IMAGES = ("sides 192–719 px", "one shape each, cropped around it with a 30 % margin")


def _accuracy_rows(task: Task, metrics: dict[str, float]) -> str:
    if task == "classify":
        return (f"| top-1 accuracy (held-out) | {metrics['top1']:.3f} |\n"
                f"| top-5 accuracy (held-out) | {metrics['top5']:.3f} |")
    kind = {"segment": "mask ", "pose": "keypoint "}.get(task, "")
    return (f"| {kind}mAP50 (held-out) | {metrics['map50']:.3f} |\n"
            f"| {kind}mAP50-95 (held-out) | {metrics['map50_95']:.3f} |")


def _model_card(cfg: TrainConfig, metrics: dict[str, float], minutes: float, size: int) -> str:
    classes = "\n".join(f"| {i} | {n} |" for i, n in enumerate(CLASSES))
    yaml = f"yolov8n{SUFFIX[cfg.task]}.yaml"
    task = "" if cfg.task == "detect" else f" --task {cfg.task}"
    return f"""# The demo model{"" if cfg.task == "detect" else f" for `{cfg.task}`"}

`{cfg.stem}.pt` is an Ultralytics YOLOv8n{SUFFIX[cfg.task]} checkpoint trained from scratch (`{yaml}`,
no pre-trained weights) on a synthetic data set of coloured shapes on noisy, textured backgrounds
that `yoloserve train-demo{task}` generates; it predicts {_WHAT[cfg.task]}. `{cfg.stem}.onnx` is the
same model exported to ONNX (dynamic batch axis). Both carry their task, class names and input size
in their metadata.

| field | value |
|---|---|
| task | {cfg.task} |
| architecture | YOLOv8n{SUFFIX[cfg.task]} ({len(CLASSES)} classes) |
| input size | {cfg.imgsz} × {cfg.imgsz} |
| weights | {size / 1e6:.1f} MB |
| training split | {cfg.train_images} images, seed {cfg.seed}, {_IMAGES[cfg.task == "classify"]} |
| held-out split | {cfg.val_images} images, seed {cfg.seed + 1} (never seen in training) |
{_accuracy_rows(cfg.task, metrics)}
| training time | {minutes:.1f} min on a 2-core CPU |

## Classes
| id | name |
|---|---|
{classes}

## Reproduce
```bash
yoloserve train-demo{task} --out models/
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
    data = write_task_dataset(
        cfg.workdir / "data", cfg.task, train=cfg.train_images, val=cfg.val_images,
        train_seed=cfg.seed, val_seed=cfg.seed + 1,
    )
    best = _train(cfg, data)
    minutes = (time.monotonic() - started) / 60
    weights = cfg.out / f"{cfg.stem}.pt"
    shutil.copyfile(best, weights)
    metrics = _evaluate(weights, data, cfg.imgsz, cfg.task, cfg.workdir)
    _export(weights, weights)
    card = cfg.out / ("README.md" if cfg.task == "detect" else f"{cfg.stem}.md")
    card.write_text(_model_card(cfg, metrics, minutes, weights.stat().st_size))
    log.info("demo model written to %s: %s", weights, metrics)
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(train_demo(TrainConfig()))
