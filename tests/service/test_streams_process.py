"""Streams in a real service process: the WebSocket feed, and a stream that outlives its process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import orjson
import pytest
import websockets

from tests.service.streams_support import clip, encoded, service_tracks
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow

ARGS = ("--model", "models/demo.onnx", "--max-batch-size", "4", "--no-warmup", "--log-level",
        "WARNING")


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return encoded(clip(21))[:16]


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    with ServiceProcess(*ARGS) as proc:
        yield proc


def ws_url(proc: ServiceProcess, stream_id: str) -> str:
    return f"ws://127.0.0.1:{proc.port}/v1/streams/{stream_id}/ws"


async def test_websocket_feed_answers_every_frame_in_order(service: ServiceProcess,
                                                           frames: list[bytes]) -> None:
    async with websockets.connect(ws_url(service, "ws-feed")) as ws:
        await ws.send(orjson.dumps({"conf": 0.1, "tracker": "bytetrack"}).decode())
        for data in frames:  # all at once: the server detects several while it answers
            await ws.send(data)
        answers = [orjson.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in frames]
    assert [a["stream"]["seq"] for a in answers] == list(range(1, len(frames) + 1))
    assert [a["stream"]["stream_started"] for a in answers] == [True] + [False] * (len(frames) - 1)
    # the same frames, posted one by one to another stream, are tracked the same
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        posted = []
        for seq, data in enumerate(frames, start=1):
            r = await client.post("/v1/streams/posted/frames", data={"seq": str(seq)},
                                  files={"frame": ("f.jpg", data, "image/jpeg")})
            posted.append(r.json())
    assert service_tracks(answers) == service_tracks(posted)


async def test_websocket_a_bad_frame_is_answered_in_its_place(service: ServiceProcess,
                                                              frames: list[bytes]) -> None:
    async with websockets.connect(ws_url(service, "ws-mixed")) as ws:
        for data in (frames[0], b"not an image", frames[1]):
            await ws.send(data)
        answers = [orjson.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(3)]
    assert answers[0]["stream"] == {"id": "ws-mixed", "seq": 1, "stream_started": True, "timestamp_ms": None}
    assert answers[1]["error"]["code"] == "invalid_image"
    assert answers[2]["stream"] == {"id": "ws-mixed", "seq": 3, "stream_started": False, "timestamp_ms": None}


async def test_websocket_bad_parameters_are_answered_and_closed(service: ServiceProcess) -> None:
    async with websockets.connect(ws_url(service, "ws-bad")) as ws:
        await ws.send(orjson.dumps({"tracker": "sort"}).decode())
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
        assert error["error"]["code"] == "validation_error"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_a_stream_starts_again_after_its_process_restarts(frames: list[bytes]) -> None:
    def send(proc: ServiceProcess, seq: int) -> httpx.Response:
        return httpx.post(f"{proc.url}/v1/streams/cam-7/frames", data={"seq": str(seq)},
                          files={"frame": ("f.jpg", frames[seq], "image/jpeg")}, timeout=30)

    first = ServiceProcess(*ARGS).start()
    try:
        started = [send(first, seq).json()["stream"]["stream_started"] for seq in range(3)]
        assert started == [True, False, False]
    finally:
        first.stop()
    with ServiceProcess(*ARGS, port=first.port) as second:
        resumed = send(second, 3)  # the frame after the last: no error, a new stream
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["stream"] == {"id": "cam-7", "seq": 3, "stream_started": True,
                                            "timestamp_ms": None}
        assert send(second, 4).json()["stream"]["stream_started"] is False
