"""The models one process serves: each with its own engine, batcher and raw network, loaded
together and closed together, plus the aliases that split traffic between them by weight.

They share what the process has once: the device (its forward-pass slots, sized by the compute
plan of the first model and given to every batcher), admission (one capacity for every image in
the process), and the decode pool. The first model is the default: the routes without
``/models/{name}`` address it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batching import Device
from service.errors import ServiceError
from service.modelspec import RAW_SUFFIX, Alias, ModelSpec, resolve_specs
from service.runtime.admission import Admission, capacity
from service.runtime.compute import ComputePlan, decode_threads, plan_compute, shared_plan
from wire import errors as codes

if TYPE_CHECKING:
    from service.metrics import ServiceMetrics
    from service.runtime.inferencer import Inferencer
    from service.runtime.raw import RawRunner
    from service.settings import Settings
    from service.shared import SharedStore

__all__ = ["ModelNotFound", "ModelRegistry", "ServedModel", "WeightedPicker", "load_models"]

log = logging.getLogger("yoloserve")


class ModelNotFound(ServiceError):
    row = codes.MODEL_NOT_FOUND


class WeightedPicker:
    """Picks one of ``targets`` with probability proportional to its weight."""

    def __init__(self, targets: Sequence[tuple[str, float]], rng: random.Random | None = None
                 ) -> None:
        self.names = [name for name, _ in targets]
        self.weights = [weight for _, weight in targets]
        self._rng = rng or random.Random()

    def pick(self) -> str:
        return self._rng.choices(self.names, self.weights)[0]


@dataclass(frozen=True)
class ServedModel:
    """One model: its detection path (``/v1``, and ``/v2`` end to end) and its raw network."""

    inferencer: Inferencer
    raw: RawRunner

    @property
    def name(self) -> str:
        return self.inferencer.meta.name


class ModelRegistry:
    def __init__(self, models: Sequence[ServedModel], aliases: dict[str, Alias], *,
                 device: Device, admission: Admission,
                 decode_pool: ThreadPoolExecutor | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.default = models[0].name
        self.aliases = aliases
        self.device = device
        self.admission = admission
        self._pickers = {name: WeightedPicker(a.targets) for name, a in aliases.items()}
        self._decode_pool = decode_pool

    @property
    def default_model(self) -> ServedModel:
        return self.models[self.default]

    @property
    def inflight_batches(self) -> int:
        """Batches running or delivering their answers, of every model and raw network."""
        return sum(part.batcher.inflight_batches for m in self.models.values()
                   for part in (m.inferencer, m.raw))

    @property
    def backends(self) -> set[str]:
        return {m.inferencer.meta.backend for m in self.models.values()}

    def get(self, name: str) -> ServedModel:
        """The model called ``name``, or the one an alias of that name picks for this request."""
        picker = self._pickers.get(name)
        if picker is not None:
            name = picker.pick()
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"no model named {name!r}; see GET /v1/models")
        return model

    def raw(self, name: str) -> ServedModel | None:
        """The model whose raw network ``name`` (``NAME-raw``) is, if any."""
        if not name.endswith(RAW_SUFFIX):
            return None
        return self.models.get(name[: -len(RAW_SUFFIX)])

    async def close(self, drain_timeout: float) -> None:
        await asyncio.gather(*(part.close(drain_timeout) for m in self.models.values()
                               for part in (m.inferencer, m.raw)))
        await self.device.close()
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=True, cancel_futures=True)



async def _load_one(spec: ModelSpec, plan: ComputePlan, settings: Settings,
                    metrics: ServiceMetrics, pool: ThreadPoolExecutor, device: Device,
                    admission: Admission, store: SharedStore | None) -> ServedModel:
    from service.engine import Engine, ImageLimits
    from service.runtime.inferencer import Inferencer
    from service.runtime.raw import RawRunner

    s = settings
    limits = ImageLimits(max_pixels=s.max_pixels, min_side=s.min_side, max_side=s.max_side)
    engine = await asyncio.to_thread(
        Engine.load, spec.path, backend=plan.backend, device=plan.device,
        precision=plan.precision, limits=limits, threads=plan.threads,
        streams=plan.concurrent_batches, spin=s.spin, name=spec.name, rect=s.letterbox == "rect",
        decode_reduce=s.decode_reduce, tensorrt=s.tensorrt,
    )
    if s.precision == "auto":
        because = f" ({plan.why})" if plan.why else ""
        log.info(f"precision auto: serving {plan.precision}{because}",
                 extra={"model": spec.name, "precision": plan.precision})
    if s.warmup:
        await asyncio.to_thread(engine.warmup, s.max_batch_size)
    metrics.set_model(engine.meta)
    inferencer = Inferencer(engine, s, metrics, device=device, admission=admission,
                            decode_executor=pool, store=store)
    raw = await asyncio.to_thread(RawRunner, engine, s, metrics, device, admission)
    meta = engine.meta
    log.info("model ready", extra={"model": meta.name, "version": meta.version,
                                   "backend": meta.backend, "device": meta.device,
                                   "precision": meta.precision,
                                   "concurrent_batches": plan.concurrent_batches,
                                   "threads": plan.threads})
    return ServedModel(inferencer, raw)


async def load_models(settings: Settings, metrics: ServiceMetrics,
                      store: SharedStore | None = None) -> ModelRegistry:
    """Load every model of the settings, one after the other, and start their batchers."""
    specs, aliases = resolve_specs(settings.model, settings.models, settings.model_alias)
    # each model's backend and precision from its own plan; slots and threads from the first's
    plans = [await asyncio.to_thread(plan_compute, settings, spec.path) for spec in specs]
    plans = shared_plan(settings, plans)
    slots = plans[0].concurrent_batches
    device = Device(slots, name="device")
    admission = Admission(capacity(settings.max_queue, settings.max_batch_size, slots), device)
    pool = ThreadPoolExecutor(decode_threads(settings), thread_name_prefix="decode")
    loaded: list[ServedModel] = []
    try:
        for spec, plan in zip(specs, plans, strict=True):
            loaded.append(await _load_one(spec, plan, settings, metrics, pool, device, admission,
                                          store))
        for m in loaded:
            await m.inferencer.start()
            await m.raw.start()
    except BaseException:
        for m in loaded:
            await m.inferencer.close(0)
            await m.raw.close(0)
        await device.close(0)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return ModelRegistry(loaded, aliases, device=device, admission=admission, decode_pool=pool)
