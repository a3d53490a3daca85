"""Video streams: one tracker per stream, frames detected in the batches every request shares."""

from service.runtime.streams.registry import PeerSetup, StreamRegistry
from service.runtime.streams.saved import SavedStreams

__all__ = ["PeerSetup", "SavedStreams", "StreamRegistry"]
