"""Batchers sharing one device: its slots bound the passes of all of them, and a freed slot goes
to the batcher whose item has waited longest."""

from __future__ import annotations

import asyncio

from batching_testkit import Gate, yield_loop

from batching import Device, DynamicBatcher


async def test_two_batchers_never_run_more_passes_than_the_device_has_slots() -> None:
    device = Device(2, name="shared")
    gate = Gate()
    async with (DynamicBatcher(gate, max_batch_size=2, max_wait=0.0, device=device, name="a") as a,
                DynamicBatcher(gate, max_batch_size=2, max_wait=0.0, device=device, name="b") as b):
        calls = [asyncio.ensure_future(a.submit(i)) for i in range(6)]
        calls += [asyncio.ensure_future(b.submit(100 + i)) for i in range(6)]
        await gate.started()
        await gate.started()
        await yield_loop(20)
        assert len(gate.calls) == 2  # both slots busy: nothing else runs (one batch is staged)
        assert device.busy == 3
        gate.open()
        results = await asyncio.gather(*calls)
    assert results == [i * 10 for i in range(6)] + [(100 + i) * 10 for i in range(6)]
    assert device.peak == 2
    assert sorted(gate.seen) == [*range(6), *range(100, 106)]


async def test_a_freed_slot_goes_to_the_oldest_waiting_item_not_to_the_busiest_batcher() -> None:
    device = Device(1, name="shared")
    gate = Gate()
    async with (DynamicBatcher(gate, max_batch_size=2, max_wait=0.0, device=device, name="a") as a,
                DynamicBatcher(gate, max_batch_size=2, max_wait=0.0, device=device, name="b") as b):
        first = [asyncio.ensure_future(a.submit(i)) for i in range(4)]
        assert await gate.started() == [0, 1]
        await yield_loop()
        lone = asyncio.ensure_future(b.submit(100))  # one item, never a full batch
        await yield_loop()
        later = [asyncio.ensure_future(a.submit(i)) for i in range(4, 12)]
        await yield_loop(20)
        gate.release(1)
        assert await gate.started() == [2, 3]  # staged before b's item came
        await yield_loop(20)  # a has full batches waiting; b's older item must not lose its turn
        gate.release(1)
        assert await gate.started() == [100]
        gate.open()
        await asyncio.gather(*first, lone, *later)
    assert device.peak == 1


async def test_a_batcher_without_a_device_has_one_of_its_own() -> None:
    gate = Gate(opened=True)
    batcher = DynamicBatcher(gate, max_concurrent_batches=3, name="alone")
    async with batcher:
        assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [i * 10 for i in range(5)]
    assert batcher.device.slots == 3 and batcher.device.peak >= 1
