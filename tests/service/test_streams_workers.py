"""One owner per stream under ``serve --workers 4``: eight streams interleaved, every frame on a new
connection (so the frames of a stream land on every worker), each tracked as Ultralytics'
``model.track(frame, persist=True)`` tracks that stream's frames alone; ``GET /v1/streams`` lists
every worker's streams from any of them; a SIGKILLed worker's streams go on."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from harness.procs import wait_until
from service.demo.clips import Clip, identity_switches
from tests.conftest import DEMO_PT
from tests.service.streams_support import (
    assert_same_tracking,
    boxes_only,
    clip,
    encoded,
    service_tracks,
    ultralytics_tracks,
)
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow

STREAMS, WORKERS = 8, 4
FRAME_MS = 1000 / 30  # the clips' timestamps: 30 frames/s, the rate track_buffer is counted at
CONF, IOU, IMGSZ = 0.1, 0.7, 256
ARGS = ("--model", "models/demo.onnx", "--workers", str(WORKERS), "--max-batch-size", "8",
        "--no-warmup", "--log-level", "WARNING", "--cores", "1")


@pytest.fixture(scope="module")
def clips() -> list[tuple[Clip, list[bytes]]]:
    return [(c, encoded(c)) for c in (clip(seed) for seed in range(STREAMS))]


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    with ServiceProcess(*ARGS, env={"YOLOSERVE_CACHE_ENABLED": "false"}) as proc:
        yield proc


def _workers(proc: ServiceProcess) -> list[psutil.Process]:
    assert proc.proc is not None
    return psutil.Process(proc.proc.pid).children()


async def _feed(url: str, stream_id: str, frames: list[bytes], tracker: str
                ) -> list[dict[str, Any]]:
    answers = []
    for seq, data in enumerate(frames):
        # a new connection per frame: gunicorn hands each to whichever worker accepts it
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
            r = await client.post(f"/v1/streams/{stream_id}/frames",
                                  files={"frame": ("frame.jpg", data, "image/jpeg")},
                                  data={"seq": str(seq), "tracker": tracker, "conf": str(CONF),
                                        "iou": str(IOU), "timestamp_ms": str(seq * FRAME_MS)})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
async def test_interleaved_streams_over_four_workers_track_as_ultralytics_does_alone(
        service: ServiceProcess, clips: list[tuple[Clip, list[bytes]]], tracker: str) -> None:
    answers = await asyncio.gather(*(_feed(service.url, f"{tracker}-{i}", frames, tracker)
                                     for i, (_, frames) in enumerate(clips)))
    compared = ours_switches = their_switches = 0
    for i, ((c, frames), feed) in enumerate(zip(clips, answers, strict=True)):
        assert [a["stream"]["seq"] for a in feed] == list(range(len(frames)))
        assert [a["stream"]["timestamp_ms"] for a in feed] == [k * FRAME_MS for k in range(len(frames))]
        assert [a["stream"]["stream_started"] for a in feed] == [True] + [False] * (len(frames) - 1)
        theirs = ultralytics_tracks(DEMO_PT, frames, f"{tracker}.yaml", CONF, IOU, IMGSZ)
        ours = service_tracks(feed)
        compared += assert_same_tracking(ours, theirs, f"{tracker} stream {i}")
        ours_switches += identity_switches(c.truth, boxes_only(ours))
        their_switches += identity_switches(c.truth, boxes_only(theirs))
    assert compared > STREAMS * len(clips[0][1])
    assert ours_switches <= their_switches

    # every worker lists every stream (each asked on a new connection)
    for _ in range(2 * WORKERS):
        async with httpx.AsyncClient(base_url=service.url, timeout=30.0) as client:
            listed = (await client.get("/v1/streams")).json()["streams"]
        ids = {s["id"] for s in listed}
        assert {f"{tracker}-{i}" for i in range(STREAMS)} <= ids
        assert len(ids) == len(listed)  # each stream held once
    async with httpx.AsyncClient(base_url=service.url, timeout=30.0) as client:
        for i in range(STREAMS):
            assert (await client.delete(f"/v1/streams/{tracker}-{i}")).status_code == 204
        listed = (await client.get("/v1/streams")).json()["streams"]
    assert not {s["id"] for s in listed} & {f"{tracker}-{i}" for i in range(STREAMS)}


async def test_a_killed_workers_streams_go_on_elsewhere(
        service: ServiceProcess, clips: list[tuple[Clip, list[bytes]]]) -> None:
    frames = clips[0][1][:12]
    victims = _workers(service)
    assert len(victims) == WORKERS

    async def post(stream: str, seq: int) -> httpx.Response:
        # a new connection each time: none is left to the killed worker
        async with httpx.AsyncClient(base_url=service.url, timeout=60.0) as client:
            return await client.post(f"/v1/streams/{stream}/frames",
                                     files={"frame": ("f.jpg", frames[seq], "image/jpeg")},
                                     data={"seq": str(seq)})

    for seq in range(6):
        for i in range(STREAMS):
            assert (await post(f"kill-{i}", seq)).status_code == 200
    victims[0].send_signal(signal.SIGKILL)
    for seq in range(6, 12):
        for i in range(STREAMS):
            r = await post(f"kill-{i}", seq)
            assert r.status_code == 200, r.text
    wait_until(lambda: len(_workers(service)) == WORKERS, 120, "gunicorn replaced the worker")
