"""Inference backends: each runs one forward pass over a stacked uint8 batch."""

from service.engine.backends.base import Backend, resolve_device

__all__ = ["Backend", "resolve_device"]
