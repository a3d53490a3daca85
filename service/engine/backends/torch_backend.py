"""PyTorch backend: the Ultralytics model's ``nn.Module``, fused, in inference mode.

At fp16 (CUDA) the weights are FP16 and the forward pass runs under ``torch.autocast``; at bf16
(CUDA, or a CPU with bf16 units) the FP32 weights run under ``torch.autocast(dtype=bfloat16)``.
On CUDA ``cudnn.benchmark`` picks the fastest kernels for each warmed-up batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from service.engine.backends.base import Outputs, task_of
from service.engine.errors import ModelLoadError

__all__ = ["TorchBackend"]

log = logging.getLogger(__name__)


def _input_size(args: Any) -> int:
    imgsz = args.get("imgsz", 640) if isinstance(args, dict) else getattr(args, "imgsz", 640)
    return int(max(imgsz) if isinstance(imgsz, list | tuple) else imgsz)


def _guess_task(model: Any) -> str:
    from ultralytics.nn.tasks import guess_model_task

    return str(guess_model_task(model))  # type: ignore[no-untyped-call]


class TorchBackend:
    name = "torch"

    def __init__(self, weights: Path, device: str, precision: str = "fp32") -> None:
        from ultralytics.nn.tasks import load_checkpoint

        self._device = torch.device(device)
        try:
            model, _ = load_checkpoint(  # type: ignore[no-untyped-call]
                str(weights), device=self._device, fuse=True
            )
        except Exception as exc:  # ultralytics raises many kinds for bad files
            raise ModelLoadError(f"cannot load PyTorch weights {weights.name}: {exc}") from exc
        if precision not in {"fp32", "fp16", "bf16"}:
            raise ModelLoadError(f"the torch backend runs fp32, fp16 or bf16, not {precision}")
        self._half = precision == "fp16"
        self._autocast = torch.bfloat16 if precision == "bf16" else torch.float16
        self._amp = precision != "fp32"
        if self._device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self._model = (model.half() if self._half else model.float()).eval()
        self.device = str(self._device)
        self.precision = precision
        self.input_size = _input_size(getattr(model, "args", {}))
        self.stride = int(max(int(model.stride.max()), 32)) if hasattr(model, "stride") else 32
        self.names = {int(k): str(v) for k, v in dict(model.names).items()}
        self.task, self.kpt_shape = task_of(
            {"task": getattr(model, "task", None) or _guess_task(model),
             "kpt_shape": getattr(model, "kpt_shape", None)}, self.names)

    def forward(self, batch: NDArray[np.uint8]) -> Outputs:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self._device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).contiguous().flip(1)  # BHWC BGR -> BCHW RGB
            x = (x.half() if self._half else x.float()).div_(255)
            return self._run(x)

    def forward_raw(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
            out = self._run(x.half() if self._half else x.float())[0]
            return np.asarray(out.cpu().numpy(), dtype=np.float32)

    def _run(self, x: torch.Tensor) -> Outputs:
        with torch.autocast(self._device.type, dtype=self._autocast, enabled=self._amp):
            y = self._model(x)
        # eval mode answers (inference outputs, training-form outputs); a segmenter's first part
        # is itself (predictions, prototypes)
        y = y[0] if isinstance(y, list | tuple) else y
        parts = y if isinstance(y, list | tuple) else (y,)
        return tuple(part.float() for part in parts)

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        for n in batch_sizes:
            self.forward(np.full((n, self.input_size, self.input_size, 3), 114, np.uint8))
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
