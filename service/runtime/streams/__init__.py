"""Video streams: one tracker per stream, frames detected in the batches every request shares."""

from service.runtime.streams.registry import StreamRegistry

__all__ = ["StreamRegistry"]
