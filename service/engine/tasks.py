"""What each Ultralytics task makes of the network's outputs, one image at a time, as Ultralytics'
own predictors do (``SegmentationPredictor``, ``PosePredictor``, ``OBBPredictor``,
``ClassificationPredictor``), so that the answers equal ``predict(rect=False)``:

- ``segment``: NMS over boxes and classes, then each kept box's mask coefficients × the image's
  prototypes, upsampled to the input, cropped to the box and thresholded (``process_mask``); a box
  whose mask is empty is dropped, as Ultralytics drops it; the mask's outline (``masks2segments``)
  is scaled back to original-image pixels (``masks.xy``), or the mask, undone from the letterbox,
  is COCO RLE;
- ``pose``: NMS, then each kept box's keypoints scaled back like the boxes;
- ``obb``: rotated NMS (probiou), the rotated boxes regularised and scaled back;
- ``classify``: the probabilities as the network gives them (its input is the classifier's own
  resize and centre crop, ``preprocess.classify_crop``).

Detection (boxes alone) keeps its batched path (``postprocess``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from service.engine.geometry import rotated_corners
from service.engine.types import Detections, DetectParams, Letterbox

__all__ = ["TASKS", "postprocess_task", "rle_encode"]

TASKS = ("detect", "segment", "pose", "obb", "classify")


def _unletterbox(xy: torch.Tensor, lb: Letterbox, clip: bool = True) -> torch.Tensor:
    """Input-space x, y (the last axis's first two) to original pixels, clipped to the image
    unless told not to (a rotated box's centre is not clipped, as in Ultralytics)."""
    out = xy.clone()
    out[..., 0] = (xy[..., 0] - lb.pad_x) / lb.gain_x
    out[..., 1] = (xy[..., 1] - lb.pad_y) / lb.gain_y
    if clip:
        out[..., 0] = out[..., 0].clamp(0, lb.width)
        out[..., 1] = out[..., 1].clamp(0, lb.height)
    return out


def _boxes(xyxy: torch.Tensor, lb: Letterbox) -> torch.Tensor:
    return _unletterbox(xyxy.reshape(-1, 2, 2), lb).reshape(-1, 4)


def _nms(pred: torch.Tensor, p: DetectParams, nc: int, rotated: bool = False) -> torch.Tensor:
    from ultralytics.utils.nms import non_max_suppression

    classes = None if p.classes is None else sorted(p.classes)
    out: torch.Tensor = non_max_suppression(
        pred[None], p.conf, p.iou, classes, p.agnostic, max_det=p.max_det, nc=nc,
        rotated=rotated)[0]
    return out


def _detections(lb: Letterbox, rows: torch.Tensor, xyxy: torch.Tensor,
                names: Mapping[int, str], **extra: Any) -> Detections:
    return Detections(lb.width, lb.height, xyxy.cpu().numpy().astype(np.float32),
                      rows[:, 4].cpu().numpy().astype(np.float32),
                      rows[:, 5].cpu().numpy().astype(np.int64), names, **extra)


def _segment(pred: torch.Tensor, proto: torch.Tensor, lb: Letterbox, p: DetectParams,
             input_hw: tuple[int, int], names: Mapping[int, str]) -> Detections:
    from ultralytics.utils import ops

    rows = _nms(pred, p, len(names))
    if not len(rows):
        return _detections(lb, rows, rows[:, :4], names,
                           outlines=None if p.mask_format == "none" else [])
    masks = ops.process_mask(proto, rows[:, 6:], rows[:, :4], input_hw, upsample=True)
    keep = masks.amax((-2, -1)) > 0  # a box without a mask is dropped, as Ultralytics drops it
    rows, masks = rows[keep], masks[keep]
    outlines = None if p.mask_format == "none" else [
        _unletterbox(torch.from_numpy(xy), lb).numpy() if len(xy) else xy
        for xy in ops.masks2segments(masks)]
    rles = [rle_encode(m) for m in _original_masks(masks, lb)] if p.mask_format == "rle" else None
    return _detections(lb, rows, _boxes(rows[:, :4], lb), names, outlines=outlines, rles=rles)


def _original_masks(masks: torch.Tensor, lb: Letterbox) -> NDArray[np.uint8]:
    """Input-space masks, their letterbox padding cut and resized to the original image."""
    import cv2

    h, w = masks.shape[1:]
    top, left = lb.pad_y, lb.pad_x
    bottom = min(h, top + round(lb.height * lb.gain_y))
    right = min(w, left + round(lb.width * lb.gain_x))
    out = np.zeros((len(masks), lb.height, lb.width), np.uint8)
    for i, m in enumerate(masks.cpu().numpy().astype(np.uint8)):
        out[i] = cv2.resize(m[top:bottom, left:right], (lb.width, lb.height),
                            interpolation=cv2.INTER_NEAREST)
    return out


def rle_encode(mask: NDArray[np.uint8]) -> dict[str, Any]:
    """COCO's compressed RLE of a binary mask (``pycocotools.mask.encode``): run lengths in
    column-major order, starting with a run of zeros, as a LEB128-like string of 5-bit groups."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(bool)
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    chars = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run  # deltas from two runs back, as pycocotools
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((x == 0 and not c & 0x10) or (x == -1 and c & 0x10))
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def _pose(pred: torch.Tensor, lb: Letterbox, p: DetectParams, names: Mapping[int, str],
          kpt_shape: tuple[int, int]) -> Detections:
    rows = _nms(pred, p, len(names))
    kpts = rows[:, 6:].reshape(len(rows), *kpt_shape)
    kpts = _unletterbox(kpts, lb) if len(rows) else kpts
    if kpt_shape[1] == 2:  # no visibility: confidence 1, as Ultralytics' Keypoints.conf is None
        kpts = torch.cat([kpts, torch.ones_like(kpts[..., :1])], dim=-1)
    return _detections(lb, rows, _boxes(rows[:, :4], lb), names,
                       keypoints=kpts.cpu().numpy().astype(np.float32))


def _obb(pred: torch.Tensor, lb: Letterbox, p: DetectParams, names: Mapping[int, str]) -> Detections:
    rows = _nms(pred, p, len(names), rotated=True)  # x, y, w, h, conf, cls, angle
    rboxes = torch.cat([rows[:, :4], rows[:, -1:]], dim=-1)
    centres = _unletterbox(rboxes[:, :2], lb, clip=False)
    rboxes = torch.cat([centres, rboxes[:, 2:3] / lb.gain_x, rboxes[:, 3:4] / lb.gain_y,
                        rboxes[:, 4:5]], dim=-1)
    rotated = rboxes.cpu().numpy().astype(np.float32)
    corners, xyxy = rotated_corners(rotated)
    return _detections(lb, rows, torch.from_numpy(xyxy), names, rotated=rotated, corners=corners)


def postprocess_task(
    task: str, outputs: Sequence[torch.Tensor], letterboxes: Sequence[Letterbox],
    params: Sequence[DetectParams], names: Mapping[int, str],
    kpt_shape: tuple[int, int] | None = None,
) -> list[Detections]:
    """One image at a time, the answers of a ``segment``, ``pose``, ``obb`` or ``classify``
    model's batch of outputs."""
    preds = outputs[0].detach()
    if task == "classify":
        return [Detections(lb.width, lb.height, names=names,
                           probs=preds[i].float().cpu().numpy().astype(np.float32))
                for i, lb in enumerate(letterboxes)]
    out = []
    for i, (lb, p) in enumerate(zip(letterboxes, params, strict=True)):
        if task == "segment":
            hw = (int(outputs[1].shape[2]) * 4, int(outputs[1].shape[3]) * 4)
            out.append(_segment(preds[i], outputs[1][i], lb, p, hw, names))
        elif task == "pose":
            out.append(_pose(preds[i], lb, p, names, kpt_shape or (17, 3)))
        elif task == "obb":
            out.append(_obb(preds[i], lb, p, names))
        else:
            raise ValueError(f"no post-processing for task {task!r}")
    return out
