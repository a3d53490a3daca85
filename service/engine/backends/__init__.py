"""Inference backends: each runs one forward pass over a stacked uint8 batch."""

from service.engine.backends.base import Backend, Outputs, resolve_device, task_of

__all__ = ["Backend", "Outputs", "resolve_device", "task_of"]
