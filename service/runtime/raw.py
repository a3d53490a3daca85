"""The network itself (``NAME-raw``): letterboxed float images in, its output tensor out, batched
by a batcher of its own on the process's device, as Triton would serve the ONNX file."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from batching import Device, DynamicBatcher
from service.modelspec import RAW_SUFFIX
from service.runtime.admission import Admission

if TYPE_CHECKING:
    from service.engine import Engine
    from service.metrics import ServiceMetrics
    from service.settings import Settings

__all__ = ["RawRunner"]

Tensor = NDArray[np.float32]


class RawRunner:
    """``infer`` takes ``(N, 3, S, S)`` float32 RGB in 0-1; each image is one batcher item,
    admitted like any other image of the process."""

    def __init__(self, engine: Engine, settings: Settings, metrics: ServiceMetrics,
                 device: Device, admission: Admission) -> None:
        self._engine = engine
        self.meta = engine.meta
        self.name = engine.meta.name + RAW_SUFFIX
        self.input_shape = (3, engine.meta.input_size, engine.meta.input_size)
        # the network's output for one image (a forward pass of a blank image tells it)
        self.output_shape: tuple[int, ...] = tuple(
            engine.backend.forward_raw(np.zeros((1, *self.input_shape), np.float32)).shape[1:])
        self.observer = metrics.for_model(self.name)
        self.admission = admission
        self.batcher: DynamicBatcher[Tensor, Tensor] = DynamicBatcher(
            self._run,
            max_batch_size=settings.max_batch_size,
            max_wait=settings.max_wait_ms / 1000,
            max_queue=admission.capacity,
            observer=self.observer,
            name=f"inference-{self.name}",
            device=device,
            latency_target=(None if settings.latency_target_ms is None
                            else settings.latency_target_ms / 1000),
        )

    async def start(self) -> None:
        await self.batcher.start()

    async def close(self, drain_timeout: float) -> None:
        await self.batcher.close(drain_timeout)

    def _run(self, images: list[Tensor]) -> list[Tensor]:
        self.observer.on_forward(len(images), "v2")
        out = self._engine.backend.forward_raw(np.stack(images))
        return list(out)

    async def _one(self, image: Tensor, deadline: float | None) -> Tensor:
        with self.admission.admit():
            return await self.batcher.submit(image, deadline)

    async def infer(self, batch: Tensor, deadline: float | None = None) -> Tensor:
        """The network's output for every image of ``batch``, in order."""
        if self.admission.overloaded:
            self.observer.on_dropped("refused", len(batch))
            raise self.admission.refusal()
        outs = await asyncio.gather(*(self._one(img, deadline) for img in batch))
        return np.stack(outs) if outs else np.zeros((0, *self.output_shape), np.float32)
