"""``track``: frames sent in order with their seq, retries that keep it, a lost answer skipped,
pacing, video files and arrays; on a mock transport and the fake clock."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BASE_URL, FakeTime, result_payload, status

from clients import AsyncDetectionClient, DetectionClient, InvalidRequest, LostFrame

MakeClient = Callable[..., AsyncDetectionClient]
FRAME = b"\x89PNG\r\n\x1a\nframe"
_FIELD = re.compile(rb'name="([a-z_]+)"\r\n\r\n([^\r]*)\r\n')


def fields(request: httpx.Request) -> dict[str, str]:
    """The form fields of a multipart request (not the file)."""
    return {k.decode(): v.decode() for k, v in _FIELD.findall(request.read())}


def stream_answer(stream: str, seq: int, *, started: bool = False) -> httpx.Response:
    body: dict[str, Any] = result_payload(f"frame-{seq}")
    body["detections"] = [{**d, "track_id": 7} for d in body["detections"]]
    body["stream"] = {"id": stream, "seq": seq, "stream_started": started}
    return httpx.Response(200, json=body)


class StreamServer:
    """Processes frames as the service does (strictly increasing seq, 409 otherwise); ``faults``
    maps a request number (1-based) to what happens instead: ``"lost"`` processes the frame and
    then breaks the connection, an ``httpx.Response`` is answered without processing."""

    def __init__(self, faults: dict[int, str | httpx.Response] | None = None) -> None:
        self.faults = faults or {}
        self.requests: list[httpx.Request] = []
        self.last = -1
        self.processed: list[int] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        fault = self.faults.get(len(self.requests))
        if isinstance(fault, httpx.Response):
            return fault
        stream = request.url.path.split("/")[3]
        seq = int(fields(request)["seq"])
        if seq <= self.last:
            return status(409, "stale_frame")
        self.last = seq
        self.processed.append(seq)
        if fault == "lost":
            raise httpx.ReadError("connection reset after the work was done")
        return stream_answer(stream, seq, started=len(self.processed) == 1)

    def seqs(self) -> list[int]:
        return [int(fields(r)["seq"]) for r in self.requests]


async def collect(client: AsyncDetectionClient, *args: Any, **kwargs: Any) -> list[Any]:
    return [result async for result in client.track(*args, **kwargs)]


async def test_frames_go_in_order_with_their_seq_and_parameters(make_client: MakeClient) -> None:
    server = StreamServer()
    client = make_client(server)
    results = await collect(
        client,
        "cam-1",
        [FRAME] * 4,
        first_seq=10,
        conf=0.3,
        classes=[0, "square"],
        tracker="botsort",
        tracker_options={"track_buffer": 60, "with_reid": False},
    )
    assert [r.stream.seq for r in results] == [10, 11, 12, 13]
    assert results[0].stream.stream_started and not results[1].stream.stream_started
    assert results[0].detections[0].track_id == 7
    assert {r.url.path for r in server.requests} == {"/v1/streams/cam-1/frames"}
    sent = fields(server.requests[0])
    assert sent == {
        "seq": "10",
        "conf": "0.3",
        "classes": "0,square",
        "tracker": "botsort",
        "track_buffer": "60",
        "with_reid": "false",
    }


async def test_retries_keep_the_frame_s_seq(make_client: MakeClient) -> None:
    server = StreamServer({2: status(503, "overloaded", **{"Retry-After": "1"}), 4: status(502)})
    results = await collect(make_client(server), "cam-1", [FRAME] * 3)
    assert [r.stream.seq for r in results] == [0, 1, 2]
    assert server.seqs() == [0, 1, 1, 2, 2]
    assert [r.headers["x-attempt"] for r in server.requests] == ["1", "1", "2", "1", "2"]
    # each frame's tries are one call: one request id, kept across its retries
    ids = [r.headers["x-request-id"] for r in server.requests]
    assert ids[1] == ids[2] and ids[3] == ids[4] and len(set(ids)) == 3


async def test_a_processed_frame_whose_answer_was_lost_is_skipped(make_client: MakeClient) -> None:
    server = StreamServer({2: "lost"})  # frame 1 is processed, then the connection breaks
    lost: list[LostFrame] = []
    results = await collect(make_client(server), "cam-1", [FRAME] * 4, on_lost=lost.append)
    assert server.seqs() == [0, 1, 1, 2, 3]  # the retry kept seq 1 and got 409 stale_frame
    assert server.processed == [0, 1, 2, 3]  # the service tracked every frame once
    assert [r.stream.seq for r in results] == [0, 2, 3]
    assert [(x.stream_id, x.seq, x.error.code) for x in lost] == [("cam-1", 1, "stale_frame")]


async def test_a_stale_first_try_is_raised(make_client: MakeClient) -> None:
    server = StreamServer()
    server.last = 5  # someone else fed this stream past our seqs
    with pytest.raises(InvalidRequest) as caught:
        await collect(make_client(server), "cam-1", [FRAME] * 2)
    assert caught.value.code == "stale_frame" and caught.value.status == 409
    assert len(server.requests) == 1


async def test_a_bad_stream_id_is_refused_before_sending(make_client: MakeClient) -> None:
    server = StreamServer()
    with pytest.raises(InvalidRequest):
        await collect(make_client(server), "cam/1", [FRAME])
    assert server.requests == []


async def test_rate_paces_the_frames(make_client: MakeClient, fake_time: FakeTime) -> None:
    server = StreamServer()
    results = await collect(make_client(server), "cam-1", [FRAME] * 5, rate=10.0)
    assert len(results) == 5
    assert fake_time.sleeps == pytest.approx([0.1] * 4)  # the fake clock moves only in sleeps


async def test_async_iterables_and_leaving_early(make_client: MakeClient) -> None:
    server = StreamServer()
    read: list[int] = []

    async def frames() -> Any:
        for i in range(100):
            read.append(i)
            yield FRAME

    client = make_client(server)
    track = client.track("cam-1", frames())
    async for result in track:
        if result.stream.seq == 2:
            break
    await track.aclose()
    assert server.seqs() == [0, 1, 2]
    assert len(read) <= 5  # read ahead by one frame, not the whole source


def test_the_sync_twin() -> None:
    server = StreamServer({2: status(503, "overloaded")})
    transport = httpx.MockTransport(server)
    with DetectionClient(BASE_URL, transport=transport, backoff_base=0.001) as client:
        results = list(client.track("cam-2", [FRAME] * 3))
    assert [r.stream.seq for r in results] == [0, 1, 2]
    assert server.seqs() == [0, 1, 1, 2]


async def test_a_video_file_and_numpy_arrays(make_client: MakeClient, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("cv2")
    from service.demo.clips import make_clip, write_video

    clip = make_clip(3, frames=6, width=160, height=128)
    video = write_video(clip, tmp_path / "clip.mp4")
    server = StreamServer()
    client = make_client(server, array_format="jpeg")
    results = await collect(client, "cam-v", video)
    assert [r.stream.seq for r in results] == list(range(6))
    stamps = [float(fields(r)["timestamp_ms"]) for r in server.requests]
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0]
    assert all(b"image/jpeg" in r.read() for r in server.requests)
    server = StreamServer()
    arrays = [np.ascontiguousarray(frame) for frame in clip.frames[:2]]
    assert len(await collect(make_client(server), "cam-a", arrays)) == 2


async def test_an_unreadable_video_is_an_invalid_request(make_client: MakeClient, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    bad = tmp_path / "not-a-video.mp4"
    bad.write_bytes(b"nothing here")
    with pytest.raises(InvalidRequest) as caught:
        await collect(make_client(StreamServer()), "cam-1", bad)
    assert caught.value.code == "unreadable_video"
