"""Accuracy of a model on a labelled folder at each precision, measured as Ultralytics measures it.

mAP follows ``DetectionValidator``: the engine's forward pass, then Ultralytics' own NMS at conf
0.001, IoU 0.7, 300 boxes, multi-label (a box counts once per class above conf; the service keeps
the best class only, which reads some points lower), matched to the ground truth at IoU 0.5:0.95
with ``BaseValidator.match_predictions``' greedy rule, then ``ap_per_class``. Agreement counts the
FP32 boxes the service answers (conf 0.25) that another precision reproduces: same class, IoU >=
0.9. Results are stored beside the model in ``<stem>.evaluation.json``, one entry per backend,
precision and letterbox."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine.decode import IMAGE_SUFFIXES, image_files
from service.engine.engine import (
    BackendName,
    Engine,
    choose_backend,
    group_by_shape,
    weights_version,
)
from service.engine.errors import ImageError, ModelLoadError
from service.engine.postprocess import postprocess
from service.engine.types import Detections, DetectParams, Letterbox, Prepared

__all__ = [
    "DatasetError",
    "EvalRow",
    "Evaluation",
    "LabelledImage",
    "agreement",
    "entry_for",
    "evaluate",
    "evaluation_path",
    "label_path",
    "load_dataset",
    "load_evaluation",
    "match_predictions",
    "save",
    "to_markdown",
    "variant",
]

IOU_THRESHOLDS: NDArray[np.float64] = np.linspace(0.5, 0.95, 10)
VAL_CONF, VAL_IOU, VAL_MAX_DET = 0.001, 0.7, 300  # Ultralytics' validator defaults
AGREEMENT_CONF = 0.25
AGREEMENT_IOU = 0.9
BATCH = 8

Boxes = NDArray[np.float64]


class DatasetError(ValueError):
    """The labelled folder cannot be evaluated: no images, an unreadable image, a bad label line."""


@dataclass(frozen=True)
class LabelledImage:
    """One image and its ground truth: class ids and normalised ``xyxy`` boxes."""

    path: Path
    classes: NDArray[np.int64]
    boxes: Boxes


def label_path(image: Path) -> Path | None:
    """The label file of ``image`` as Ultralytics finds it (the last ``/images/`` of the path
    becomes ``/labels/``), else a ``.txt`` beside the image; ``None`` when neither exists."""
    text, sa, sb = str(image), f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    candidates = [image.with_suffix(".txt")]
    if sa in text:
        candidates.insert(0, Path(sb.join(text.rsplit(sa, 1))).with_suffix(".txt"))
    return next((p for p in candidates if p.is_file()), None)


def _read_labels(path: Path | None) -> tuple[NDArray[np.int64], Boxes]:
    """YOLO lines ``cls xc yc w h`` (or ``cls x1 y1 x2 y2 ...`` polygons, boxed) → ids, xyxy."""
    classes: list[int] = []
    boxes: list[list[float]] = []
    for number, line in enumerate(path.read_text().splitlines() if path else [], 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise DatasetError(f"{path}:{number}: not numbers: {line!r}") from None
        if len(values) == 5:
            _, xc, yc, w, h = values
            boxes.append([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2])
        elif len(values) >= 7 and len(values) % 2 == 1:
            xy = np.asarray(values[1:]).reshape(-1, 2)
            boxes.append([*xy.min(axis=0).tolist(), *xy.max(axis=0).tolist()])
        else:
            raise DatasetError(f"{path}:{number}: expected `class xc yc w h`, got {line!r}")
        classes.append(int(values[0]))
    return np.asarray(classes, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4)


def load_dataset(root: Path) -> list[LabelledImage]:
    """Every image under ``root`` (recursive, sorted) with its labels; no label file, no objects."""
    paths = image_files([root])
    if not paths:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return [LabelledImage(p, *_read_labels(label_path(p))) for p in paths]


def _box_iou(a: Boxes, b: Boxes) -> Boxes:
    """Pairwise IoU of ``xyxy`` boxes: ``(len(a), len(b))``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    out: Boxes = inter / (area_a[:, None] + area_b[None, :] - inter + 1e-7)
    return out


def match_predictions(pred_cls: NDArray[np.int64], true_cls: NDArray[np.int64],
                      iou: Boxes) -> NDArray[np.bool_]:
    """``BaseValidator.match_predictions`` (greedy): predictions in descending confidence each
    claim the best unclaimed target of their class, per IoU threshold. ``iou`` is (targets, preds)."""
    thresholds = IOU_THRESHOLDS
    correct = np.zeros((len(pred_cls), len(thresholds)), dtype=bool)
    iou = iou * (true_cls[:, None] == pred_cls[None, :])
    matched = np.zeros((iou.shape[0], len(thresholds)), dtype=bool)
    columns = range(len(thresholds))
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(matched, 0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, columns] >= thresholds
        matched[k, columns] |= correct[j]
    return correct


def _arrays(dets: Detections, conf: float) -> tuple[NDArray[np.int64], Boxes]:
    """Classes and ``xyxy`` boxes of the detections above ``conf``."""
    items = [d for d in dets.items if d.confidence > conf]
    cls = np.asarray([d.class_id for d in items], np.int64)
    boxes = np.asarray([[d.x_min, d.y_min, d.x_max, d.y_max] for d in items], np.float64)
    return cls, boxes.reshape(-1, 4)


@dataclass
class _Run:
    """One engine over the data set: the validator's boxes and the service's, per image."""

    validator: list[Boxes]  # (n, 6): xyxy in model-input pixels, confidence, class
    letterboxes: list[Letterbox]
    served: list[Detections]  # what the service answers at its default thresholds
    seconds: float  # in the forward pass and the service's post-processing


def _map(dataset: Sequence[LabelledImage], run: _Run) -> tuple[float, float]:
    """mAP50 and mAP50-95 of the validator's boxes against the ground truth, both placed in the
    letterboxed input as ``DetectionValidator`` places them."""
    from ultralytics.utils.metrics import ap_per_class

    tps, confs, pred_classes, targets = [], [], [], []
    for item, pred, lb in zip(dataset, run.validator, run.letterboxes, strict=True):
        cls = pred[:, 5].astype(np.int64)
        gain = np.array([lb.width * lb.gain_x, lb.height * lb.gain_y] * 2)
        truth = item.boxes * gain + [lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y]
        if len(cls) and len(item.classes):
            tps.append(match_predictions(cls, item.classes, _box_iou(truth, pred[:, :4])))
        else:
            tps.append(np.zeros((len(cls), len(IOU_THRESHOLDS)), bool))
        confs.append(pred[:, 4])
        pred_classes.append(cls)
        targets.append(item.classes)
    ap = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pred_classes),
                      np.concatenate(targets))[5]
    if not len(ap):
        return 0.0, 0.0
    return float(ap[:, 0].mean()), float(ap.mean())


def agreement(reference: Sequence[Detections], other: Sequence[Detections],
              conf: float = AGREEMENT_CONF, iou: float = AGREEMENT_IOU) -> tuple[int, int]:
    """``(matched, total)``: reference boxes above ``conf`` that an unmatched box of ``other``
    reproduces (same class, IoU >= ``iou``), paired greedily from the highest IoU."""
    matched = total = 0
    for ref, oth in zip(reference, other, strict=True):
        rc, rb = _arrays(ref, conf)
        oc, ob = _arrays(oth, conf)
        total += len(rc)
        if not len(rc) or not len(oc):
            continue
        ious = _box_iou(rb, ob) * (rc[:, None] == oc[None, :])
        rows, cols = np.nonzero(ious >= iou)
        used_r: set[int] = set()
        used_c: set[int] = set()
        for k in np.argsort(-ious[rows, cols], kind="stable"):
            r, c = int(rows[k]), int(cols[k])
            if r not in used_r and c not in used_c:
                used_r.add(r)
                used_c.add(c)
        matched += len(used_r)
    return matched, total


def _forward(engine: Engine, batch: Sequence[Prepared], run: _Run) -> None:
    """One forward pass (as ``Engine.infer``), read twice: the service's post-processing, and
    Ultralytics' own NMS at the validator's settings (multi-label: a box may count per class)."""
    from ultralytics.utils.nms import non_max_suppression

    letterboxes = [p.letterbox for p in batch]
    t0 = time.perf_counter()
    preds = engine.backend.forward(np.stack([p.tensor for p in batch]))[0]
    run.served.extend(postprocess(preds, letterboxes, [DetectParams()] * len(batch),
                                  engine.meta.classes))
    run.seconds += time.perf_counter() - t0
    kept = non_max_suppression(preds.float(), VAL_CONF, VAL_IOU, multi_label=True, max_det=VAL_MAX_DET)
    run.validator.extend(np.asarray(k[:, :6].cpu().numpy(), np.float64) for k in kept)
    run.letterboxes.extend(letterboxes)


def _detect(engine: Engine, dataset: Sequence[LabelledImage]) -> _Run:
    """Every image through ``engine``, in batches of 8 (split by input shape, for ``rect``)."""
    run = _Run([], [], [], 0.0)
    order: list[int] = []
    for start in range(0, len(dataset), BATCH):
        chunk = range(start, min(start + BATCH, len(dataset)))
        try:
            prepared = {i: engine.prepare(dataset[i].path.read_bytes(), dataset[i].path.name)
                        for i in chunk}
        except ImageError as exc:
            raise DatasetError(f"an image under evaluation cannot be read: {exc}") from exc
        batch = [prepared[i] for i in chunk]
        for group in group_by_shape(batch):
            _forward(engine, [batch[i] for i in group], run)
            order.extend(chunk[i] for i in group)
    back = np.argsort(order)
    return _Run([run.validator[i] for i in back], [run.letterboxes[i] for i in back],
                [run.served[i] for i in back], run.seconds)


@dataclass(frozen=True)
class EvalRow:
    """One precision's result; ``skipped`` holds why it could not run (the figures are then 0)."""

    backend: str
    precision: str
    letterbox: str
    map50: float = 0.0
    map50_95: float = 0.0
    delta_map50_95: float = 0.0  # points (x100) against fp32
    matched: int = 0
    total: int = 0
    agreement: float = 0.0
    images: int = 0
    images_per_s: float = 0.0
    skipped: str | None = None

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.precision}/{self.letterbox}"


@dataclass
class Evaluation:
    """Every precision measured on one labelled folder, and where and when it was measured."""

    model: str
    version: str
    data: str
    images: int
    cpu: str
    date: str
    rows: list[EvalRow] = field(default_factory=list)

    @property
    def fp32(self) -> EvalRow:
        return self.rows[0]

    def entries(self) -> dict[str, dict[str, Any]]:
        """The measured rows as stored: each with the run's context and its fp32 reference."""
        context = {"data": self.data, "cpu": self.cpu, "date": self.date, "version": self.version,
                   "fp32_map50_95": round(self.fp32.map50_95, 5)}
        out = {}
        for row in self.rows:
            if row.skipped is None:
                entry = {k: round(v, 5) if isinstance(v, float) else v
                         for k, v in asdict(row).items() if k != "skipped"}
                out[row.key] = {**entry, **context}
        return out


def _measure(engine: Engine, dataset: Sequence[LabelledImage],
             reference: tuple[list[Detections], float] | None) -> tuple[EvalRow, list[Detections]]:
    engine.warmup(min(BATCH, len(dataset)))  # first passes (allocation, compilation) go untimed
    run = _detect(engine, dataset)
    map50, map50_95 = _map(dataset, run)
    matched, total = agreement(reference[0] if reference else run.served, run.served)
    row = EvalRow(
        backend=engine.meta.backend, precision=engine.meta.precision,
        letterbox=variant(engine.meta.letterbox, engine.decode_reduce),
        map50=map50, map50_95=map50_95,
        delta_map50_95=(map50_95 - reference[1]) * 100 if reference else 0.0,
        matched=matched, total=total, agreement=matched / total if total else 1.0,
        images=len(dataset), images_per_s=len(dataset) / run.seconds if run.seconds else 0.0)
    return row, run.served


def variant(letterbox: str, decode_reduce: bool) -> str:
    """How images reach the model, as evaluations are keyed: ``square``, ``rect``, and
    ``+reduced`` when large JPEGs are decoded at a reduced scale."""
    return letterbox + ("+reduced" if decode_reduce else "")


def _backend_of(model: Path, backend: BackendName, precision: str) -> str:
    """The backend that would have run ``precision``, for a row that could not."""
    try:
        return choose_backend(model, backend, "cpu", precision)[0]
    except ModelLoadError:
        return "openvino" if backend == "auto" and precision != "fp32" else backend


def evaluate(model: Path, data: Path, precisions: Sequence[str], backend: BackendName = "auto",
             threads: int | None = None, rect: bool = False,
             decode_reduce: bool = False) -> Evaluation:
    """Measure ``model`` on the labelled folder ``data``: fp32 first (the reference, decoded in
    full), then each other precision (with ``decode_reduce``, fp32 too, decoded at a reduced
    scale); one that cannot load is recorded as skipped, with the reason."""
    from service.engine.precision import detect_hardware

    dataset = load_dataset(data)
    evaluation = Evaluation(
        model=model.name, version=weights_version(model), data=data.name, images=len(dataset),
        cpu=detect_hardware().describe(), date=datetime.now(UTC).isoformat(timespec="seconds"))
    ref_engine = Engine.load(model, backend=backend, device="cpu", precision="fp32",
                             threads=threads, rect=rect)
    ref_row, ref_dets = _measure(ref_engine, dataset, None)
    del ref_engine
    evaluation.rows.append(ref_row)
    reference = (ref_dets, ref_row.map50_95)
    for precision in dict.fromkeys(p for p in precisions if p != "fp32" or decode_reduce):
        try:
            engine = Engine.load(model, backend=backend, device="cpu", precision=precision,
                                 threads=threads, rect=rect, decode_reduce=decode_reduce)
        except ModelLoadError as exc:
            evaluation.rows.append(EvalRow(_backend_of(model, backend, precision), precision,
                                           variant(ref_row.letterbox, decode_reduce),
                                           skipped=str(exc)))
            continue
        evaluation.rows.append(_measure(engine, dataset, reference)[0])
        del engine
    return evaluation


def evaluation_path(model: Path) -> Path:
    """Where the evaluation of ``model`` is stored: ``<model dir>/<stem>.evaluation.json``."""
    return model.parent / f"{model.stem}.evaluation.json"


def save(evaluation: Evaluation, model_path: Path) -> Path:
    """Write the measured rows beside ``model_path``, keeping stored entries of other backends,
    precisions or letterboxes measured on the same weights."""
    path = evaluation_path(model_path)
    stored = _read(path) or {}
    entries = {k: v for k, v in dict(stored.get("entries", {})).items()
               if isinstance(v, dict) and v.get("version") == evaluation.version}
    entries.update(evaluation.entries())
    doc = {"model": evaluation.model, "version": evaluation.version, "entries": entries}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def load_evaluation(model_path: Path) -> dict[str, Any] | None:
    """The stored evaluation of ``model_path``: beside it, else beside the ``.pt`` or ``.onnx``
    of the same stem (the folder above, for an OpenVINO IR); ``None`` when there is none."""
    folders = [model_path.parent]
    if model_path.suffix.lower() == ".xml":
        folders.append(model_path.parent.parent)
    for folder in folders:
        for sibling in (model_path.name, f"{model_path.stem}.pt", f"{model_path.stem}.onnx"):
            doc = _read(evaluation_path(folder / sibling))
            if doc is not None:
                return doc
    return None


def entry_for(model_path: Path, precision: str, letterbox: str = "square",
              backend: str | None = None) -> dict[str, Any] | None:
    """The stored entry for ``precision`` and ``letterbox`` (any backend, ``backend``'s first),
    with ``fp32_map50_95``, the reference it was measured against; ``None`` when not measured."""
    doc = load_evaluation(model_path)
    if doc is None:
        return None
    found = [dict(e) for e in dict(doc.get("entries", {})).values() if isinstance(e, dict)
             and e.get("precision") == precision and e.get("letterbox") == letterbox]
    found.sort(key=lambda e: e.get("backend") != backend)
    return found[0] if found else None


def to_markdown(evaluation: Evaluation) -> str:
    """The evaluation as a markdown table, with a line naming the model, data and CPU."""
    lines = [f"{evaluation.model} ({evaluation.version}) on {evaluation.data}: "
             f"{evaluation.images} images; {evaluation.cpu}; {evaluation.date}", "",
             "| backend | precision | letterbox | mAP50 | mAP50-95 | Δ mAP50-95 (pts) "
             "| boxes as fp32 (IoU≥0.9) | images/s |", "|---|---|---|---|---|---|---|---|"]
    for r in evaluation.rows:
        if r.skipped is not None:
            lines.append(f"| {r.backend} | {r.precision} | {r.letterbox} | skipped: "
                         f"{r.skipped.replace('|', '/')} | | | | |")
            continue
        lines.append(f"| {r.backend} | {r.precision} | {r.letterbox} | {r.map50:.3f} "
                     f"| {r.map50_95:.3f} | {r.delta_map50_95:+.2f} | {r.agreement:.1%} "
                     f"({r.matched}/{r.total}) | {r.images_per_s:.1f} |")
    return "\n".join(lines)
