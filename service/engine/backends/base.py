"""The backend interface: one forward pass over a stacked batch of letterboxed images."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["Backend", "resolve_device"]


class Backend(Protocol):
    """A model that turns ``(B, S, S, 3)`` BGR uint8 into ``(B, 4 + nc, anchors)`` float predictions."""

    name: str
    device: str
    precision: str
    input_size: int
    names: dict[int, str]

    def forward(self, batch: NDArray[np.uint8]) -> torch.Tensor: ...

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
