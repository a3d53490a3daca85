"""Video streams: one tracker per stream, frames detected in the batches every request shares."""

from service.streams.registry import StreamRegistry

__all__ = ["StreamRegistry"]
