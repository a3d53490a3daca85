"""A generic asyncio dynamic batcher: items submitted one by one, run in batches.

Knows nothing of images, HTTP or torch; imports only the standard library::

    async with DynamicBatcher(model_fn, max_batch_size=8, max_wait=0.005) as batcher:
        result = await batcher.submit(item, deadline=time.monotonic() + 2.0)
"""

from ._batcher import DynamicBatcher
from ._device import Device
from ._errors import BatchContractError, BatchingError, DeadlineExceeded, QueueFull, ShuttingDown
from ._observer import BatchObserver, NullObserver
from ._policy import default_is_oom
from ._types import BatcherState, Completed, DispatchReason, DropReason

__all__ = [
    "BatchContractError",
    "BatchObserver",
    "BatcherState",
    "BatchingError",
    "Completed",
    "DeadlineExceeded",
    "Device",
    "DispatchReason",
    "DropReason",
    "DynamicBatcher",
    "NullObserver",
    "QueueFull",
    "ShuttingDown",
    "default_is_oom",
]
