"""The backend interface: one forward pass over a stacked batch of letterboxed images."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["Backend", "Outputs", "resolve_device", "task_of"]


Outputs = tuple[torch.Tensor, ...]
"""The network's outputs, as float tensors: ``(B, 4 + nc [+ extra], anchors)`` predictions first
(the extra channels: a segmenter's mask coefficients, a pose model's keypoints, an oriented-box
model's angle), a segmenter's prototypes ``(B, 32, h, w)`` second; a classifier's ``(B, nc)``
probabilities alone."""


class Backend(Protocol):
    """A model that turns ``(B, S, S, 3)`` BGR uint8 into its outputs; ``task`` (Ultralytics'
    metadata: detect, segment, pose, obb or classify) says how to read them."""

    name: str
    device: str
    precision: str
    input_size: int
    names: dict[int, str]
    task: str
    kpt_shape: tuple[int, int] | None

    def forward(self, batch: NDArray[np.uint8]) -> Outputs: ...

    def forward_raw(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """The network alone: ``(B, 3, S, S)`` RGB in 0-1 to its own output, as float32."""
        ...

    def warmup(self, batch_sizes: Iterable[int]) -> None: ...


def resolve_device(device: str) -> str:
    """``auto`` is the first CUDA device when one is present, else the CPU."""
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return "cuda:0"
    return device


def task_of(meta: dict[str, object] | None, names: dict[int, str]) -> tuple[str, tuple[int, int] | None]:
    """The task and keypoint shape from Ultralytics' metadata (``task``, ``kpt_shape``); weights
    without it are detectors, as Ultralytics guesses for them."""
    meta = meta or {}
    task = str(meta.get("task") or "detect")
    raw = meta.get("kpt_shape")
    if isinstance(raw, str):
        import ast

        raw = ast.literal_eval(raw)
    kpt = (int(raw[0]), int(raw[1])) if isinstance(raw, list | tuple) and len(raw) == 2 else None
    return task, kpt
