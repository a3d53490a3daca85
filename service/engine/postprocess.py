"""Batched post-processing: per-image thresholds, one NMS call for the batch, boxes scaled back.

Equivalent to Ultralytics' ``non_max_suppression`` + ``scale_boxes`` applied image by image, but the
candidate selection, NMS and scaling run once for the whole batch. Each image keeps its own ``conf``,
``iou``, ``max_det`` and ``classes``: NMS groups are (image, class), or image alone when agnostic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torchvision

from service.engine.types import Detections, DetectParams, Letterbox

__all__ = ["postprocess"]


def _candidates(
    preds: torch.Tensor, params: Sequence[DetectParams]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image index, xyxy box, score and class of every anchor that passes its image's filters."""
    p = preds.float().transpose(1, 2)  # (B, anchors, 4 + nc)
    nc = p.shape[2] - 4
    scores, cls = p[..., 4:].max(-1)
    conf = torch.tensor([q.conf for q in params], dtype=scores.dtype, device=p.device)
    mask = scores > conf[:, None]
    if any(q.classes is not None for q in params):
        allowed = torch.ones((len(params), nc), dtype=torch.bool, device=p.device)
        for b, q in enumerate(params):
            if q.classes is not None:
                allowed[b] = False
                allowed[b, [c for c in q.classes if 0 <= c < nc]] = True
        mask &= allowed.gather(1, cls)
    img, anchor = mask.nonzero(as_tuple=True)
    xywh = p[img, anchor, :4]
    half = xywh[:, 2:] / 2
    boxes = torch.cat((xywh[:, :2] - half, xywh[:, :2] + half), dim=1)
    return img, boxes, scores[img, anchor], cls[img, anchor]


def _nms(
    img: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, cls: torch.Tensor,
    params: Sequence[DetectParams], nc: int,
) -> torch.Tensor:
    """Indices kept by NMS, sorted by score (highest first), one call per distinct IoU threshold."""
    agnostic = torch.tensor([q.agnostic for q in params], device=img.device)[img]
    group = torch.where(agnostic, img * (nc + 1) + nc, img * (nc + 1) + cls)
    iou = torch.tensor([q.iou for q in params], device=img.device)[img]
    kept = []
    for threshold in torch.unique(iou).tolist():
        sel = (iou == threshold).nonzero(as_tuple=True)[0]
        kept.append(sel[torchvision.ops.batched_nms(boxes[sel], scores[sel], group[sel], threshold)])
    keep = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=img.device)
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def _scale(boxes: torch.Tensor, img: torch.Tensor, boxes_of: Sequence[Letterbox]) -> torch.Tensor:
    """Undo the letterbox and clip to each original image (Ultralytics' scale_boxes + clip_boxes)."""
    lb = torch.tensor(
        [[b.pad_x, b.pad_y, b.gain_x, b.gain_y, b.width, b.height] for b in boxes_of],
        dtype=boxes.dtype, device=boxes.device,
    )[img]
    out = boxes.clone()
    out[:, 0::2] = ((boxes[:, 0::2] - lb[:, 0:1]) / lb[:, 2:3]).clamp(min=0)
    out[:, 1::2] = ((boxes[:, 1::2] - lb[:, 1:2]) / lb[:, 3:4]).clamp(min=0)
    out[:, 0::2] = torch.minimum(out[:, 0::2], lb[:, 4:5])
    out[:, 1::2] = torch.minimum(out[:, 1::2], lb[:, 5:6])
    return out


def postprocess(
    preds: torch.Tensor,
    letterboxes: Sequence[Letterbox],
    params: Sequence[DetectParams],
    names: Mapping[int, str],
) -> list[Detections]:
    """Turn raw ``(B, 4 + nc, anchors)`` predictions into detections on each original image."""
    nc = preds.shape[1] - 4
    img, boxes, scores, cls = _candidates(preds.detach(), params)
    keep = _nms(img, boxes, scores, cls, params, nc)
    img, scores, cls = img[keep], scores[keep], cls[keep]
    boxes = _scale(boxes[keep], img, letterboxes)
    img_of = img.cpu().numpy()
    boxes_of, scores_of, cls_of = boxes.cpu().numpy(), scores.cpu().numpy(), cls.cpu().numpy()
    results = []
    for b, lb in enumerate(letterboxes):
        rows = np.flatnonzero(img_of == b)[: params[b].max_det]  # in score order already
        results.append(Detections(lb.width, lb.height, boxes_of[rows], scores_of[rows],
                                  cls_of[rows].astype(np.int64), names))
    return results
