"""Tracking parity: eight streams through one service at once, each tracked as Ultralytics'
``model.track(frame, persist=True, rect=False)`` tracks that stream's frames alone; streams
of the oriented-box model (its ``.pt`` and ``.onnx``), whose tracks are rotated boxes as
``model.track()`` gives them; and streams of the segmenter and the pose model, each tracked box
with the mask or the keypoints of the detection it was matched to, as ``model.track()`` gives
them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.demo.clips import Clip, identity_switches
from tests.conftest import DEMO_PT, MODELS
from tests.service.conftest import app_client
from tests.service.streams_support import (
    MASK_TOLERANCE,
    OBB_TOLERANCE,
    Tracks,
    assert_same_tracking,
    boxes_only,
    clip,
    encoded,
    service_tracks,
    ultralytics_tracks,
)

STREAMS = 8
CONF, IOU, IMGSZ = 0.1, 0.7, 256  # model.track's default conf; the demo model's input size
OBB_STREAMS, OBB_IMGSZ = 2, 160  # the oriented-box demo model's input size
TASK_IMGSZ = 160  # the segmenter's and the pose model's
OBB_PT = MODELS / "demo-obb.pt"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clips() -> list[tuple[Clip, list[bytes]]]:
    return [(c, encoded(c)) for c in (clip(seed) for seed in range(STREAMS))]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(cache_enabled=False, max_batch_size=8) as c:
        yield c


async def _feed(client: httpx.AsyncClient, stream_id: str, frames: list[bytes],
                tracker: str) -> list[dict[str, Any]]:
    answers = []
    for seq, data in enumerate(frames):
        r = await client.post(f"/v1/streams/{stream_id}/frames",
                              files={"frame": ("frame.jpg", data, "image/jpeg")},
                              data={"seq": str(seq), "tracker": tracker, "conf": str(CONF),
                                    "iou": str(IOU)})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
async def test_interleaved_streams_track_as_ultralytics_does_alone(
        service: httpx.AsyncClient, clips: list[tuple[Clip, list[bytes]]], tracker: str) -> None:
    answers = await asyncio.gather(*(_feed(service, f"{tracker}-{i}", frames, tracker)
                                     for i, (_, frames) in enumerate(clips)))
    # the streams shared forward passes
    assert max(a["processing_metadata"]["batch_size"] for feed in answers for a in feed) > 1

    compared = ours_switches = their_switches = 0
    for i, ((c, frames), feed) in enumerate(zip(clips, answers, strict=True)):
        assert [a["stream"]["seq"] for a in feed] == list(range(len(frames)))
        assert [a["stream"]["stream_started"] for a in feed] == [True] + [False] * (len(frames) - 1)
        theirs = ultralytics_tracks(DEMO_PT, frames, f"{tracker}.yaml", CONF, IOU, IMGSZ)
        ours = service_tracks(feed)
        compared += assert_same_tracking(ours, theirs, f"{tracker} stream {i}")
        ours_switches += identity_switches(c.truth, boxes_only(ours))
        their_switches += identity_switches(c.truth, boxes_only(theirs))
    assert compared > STREAMS * len(clips[0][1])  # objects were tracked in most frames
    assert ours_switches <= their_switches


@pytest.fixture(scope="module")
def obb_clips() -> list[tuple[Clip, list[bytes]]]:
    return [(c, encoded(c)) for c in (clip(100 + seed) for seed in range(OBB_STREAMS))]


@functools.cache
def _their_obb_tracks(tracker: str, frames: tuple[bytes, ...]) -> Tracks:
    return ultralytics_tracks(OBB_PT, frames, f"{tracker}.yaml", CONF, IOU, OBB_IMGSZ, task="obb")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["demo-obb.onnx", "demo-obb.pt"])
async def obb_service(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(model=MODELS / request.param, cache_enabled=False,
                          max_batch_size=4) as c:
        yield c


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
async def test_oriented_boxes_are_tracked_as_rotated_boxes_as_ultralytics_tracks_them(
        obb_service: httpx.AsyncClient, obb_clips: list[tuple[Clip, list[bytes]]],
        tracker: str) -> None:
    answers = await asyncio.gather(*(_feed(obb_service, f"obb-{tracker}-{i}", frames, tracker)
                                     for i, (_, frames) in enumerate(obb_clips)))
    compared = 0
    for i, ((_, frames), feed) in enumerate(zip(obb_clips, answers, strict=True)):
        theirs = _their_obb_tracks(tracker, tuple(frames))  # once for .pt and .onnx
        ours = service_tracks(feed)
        compared += assert_same_tracking(ours, theirs, f"obb {tracker} stream {i}", OBB_TOLERANCE)
    assert compared > OBB_STREAMS * len(obb_clips[0][1])  # objects were tracked in most frames


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("task", "tolerance"), [("segment", MASK_TOLERANCE), ("pose", 1.0)])
async def test_masks_and_keypoints_follow_their_tracks_as_ultralytics_gives_them(
        obb_clips: list[tuple[Clip, list[bytes]]], task: str,
        tolerance: float | tuple[float, ...]) -> None:
    weights = MODELS / f"demo-{'seg' if task == 'segment' else task}.onnx"
    async with app_client(model=weights, cache_enabled=False, max_batch_size=4) as client:
        answers = await asyncio.gather(*(_feed(client, f"{task}-{i}", frames, "bytetrack")
                                         for i, (_, frames) in enumerate(obb_clips)))
    compared = 0
    for i, ((_, frames), feed) in enumerate(zip(obb_clips, answers, strict=True)):
        theirs = ultralytics_tracks(weights, frames, "bytetrack.yaml", CONF, IOU, TASK_IMGSZ,
                                    task=task)
        ours = service_tracks(feed)
        assert all(len(box) > 4 for frame in ours for _, box in frame.values())  # masks/keypoints
        compared += assert_same_tracking(ours, theirs, f"{task} stream {i}", tolerance)
    assert compared > OBB_STREAMS * len(obb_clips[0][1])  # objects were tracked in most frames
