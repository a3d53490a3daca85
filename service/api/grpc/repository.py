"""What ``/v1/model`` and ``/v1/models`` say, over gRPC, in the protocol's own calls (no call of
our own): ``RepositoryIndex`` (Triton's model repository extension; the index only) lists the
models, and each model's ``ModelConfig`` carries, beside Triton's fields (``name``,
``max_batch_size``, ``dynamic_batching``, and Ultralytics' ``parameters.metadata`` with the task,
input size and class names), what Triton's configuration has no field for, in its
``parameters`` map (each a ``string_value``):

- ``version``, ``backend``, ``device``, ``precision``, ``letterbox``: as ``/v1/model``;
- ``evaluation``: the stored evaluation as ``/v1/model``'s JSON, when there is one;
- ``default``: ``"true"`` on the service's default model only (not on its ``NAME-raw``);
- ``aliases``: ``{"ALIAS": weight, ...}`` as JSON, the aliases that send requests to this model.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.api.oip import VERSION, Target
from service.api.render import evaluation
from service.runtime.registry import ModelRegistry

__all__ = ["READY", "index_entries", "info_parameters"]

READY = "READY"  # Triton's state of a model that can be used


def info_parameters(target: Target, registry: ModelRegistry) -> dict[str, str]:
    """The ``ModelConfig.parameters`` that carry the rest of ``/v1/model``, and the model's
    place among the service's models (the default? which aliases?)."""
    model = target.model
    meta = model.inferencer.meta
    params = {"version": meta.version, "backend": meta.backend, "device": meta.device,
              "precision": meta.precision, "letterbox": meta.letterbox}
    stored = evaluation(meta.precision, model.inferencer.evaluation)
    if stored is not None:
        params["evaluation"] = stored.model_dump_json()
    if target.raw:  # NAME-raw is neither the default nor an alias's target: NAME is
        return params
    if model.name == registry.default:
        params["default"] = "true"
    routed = {alias.name: weight for alias in registry.aliases.values()
              for name, weight in alias.targets if name == model.name}
    if routed:
        params["aliases"] = orjson.dumps(routed).decode()
    return params


def index_entries(registry: ModelRegistry) -> list[dict[str, Any]]:
    """``RepositoryIndex``'s entries: every model as ``/v1/models`` lists them (the default
    first), then each one's raw network (``NAME-raw``); all ready, version ``1``."""
    names = [*registry.models, *(m.raw.name for m in registry.models.values())]
    return [{"name": name, "version": VERSION, "state": READY} for name in names]
