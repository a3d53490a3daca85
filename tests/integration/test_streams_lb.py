"""Video streams through ``yoloserve lb --policy ring_hash`` in front of the two real services:
every frame of a stream reaches one backend; SIGKILL one backend mid-clip and its streams go on
on the other (``stream_started: true`` there) with no failed frame; the WebSocket feed through
the balancer; ``yoloserve track`` on a generated clip through it all."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clients import AsyncDetectionClient, LostFrame
from harness.procs import Balancer, start_all, wait_all_healthy
from loadbalancer.hashing import Ring, key_hash
from tests.integration.stack import Fleet
from wire.schemas import StreamResult

cv2 = pytest.importorskip("cv2")

PER_BACKEND = 3
FRAMES = 24
KILL_AT = 8  # results in, in every stream, before b is killed
_SEQ = re.compile(rb'name="seq"\r\n\r\n(\d+)\r\n')


@pytest.fixture(scope="module")
def clip_frames() -> list[bytes]:
    from service.demo.clips import make_clip

    clip = make_clip(11, frames=FRAMES, width=320, height=240)
    return [bytes(cv2.imencode(".jpg", f)[1]) for f in clip.frames]


@pytest.fixture(scope="module")
def balancer(fleet: Fleet) -> Iterator[Balancer]:
    lb = Balancer("streams-lb", [fleet.url("a"), fleet.url("b")], "--policy", "ring_hash",
                  "--health-interval", "0.5", "--per-try-timeout", "30", "--log-level", "warning",
                  cli=("yoloserve", "lb"), stderr=None)
    start_all([lb], 60)
    yield lb
    lb.stop()


@pytest.fixture()
def ring(fleet: Fleet, balancer: Balancer) -> Balancer:
    """The balancer once it sees both backends healthy: a test before may have restarted one, and
    until the balancer's health checks see it back, its keys hash to the other."""
    fleet.ensure_ready("a")
    fleet.ensure_ready("b")
    wait_all_healthy(balancer, 60)
    return balancer


class Upstreams(httpx.AsyncBaseTransport):
    """httpx's transport, noting which backend answered each try of each frame."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: dict[str, list[tuple[int, str | None, int]]] = defaultdict(list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        match = _SEQ.search(request.read())
        stream = request.url.path.split("/")[3]
        seq = int(match.group(1)) if match else -1
        self.seen[stream].append((seq, response.headers.get("x-upstream"), response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def backend_id(url: str) -> str:
    return url.removeprefix("http://")


def streams_on_both(a: str, b: str) -> list[str]:
    """Stream ids, ``PER_BACKEND`` owned by each backend on the balancer's ring (the ports, and
    so the ring, change from run to run)."""
    ring = Ring([(a, 1), (b, 1)])
    owned: dict[str, list[str]] = {a: [], b: []}
    for i in range(1000):
        stream = f"cam-{i}"
        owner = owned[ring.owner(key_hash(stream.encode()))]
        if len(owner) < PER_BACKEND:
            owner.append(stream)
        if all(len(v) == PER_BACKEND for v in owned.values()):
            break
    return owned[a] + owned[b]


@pytest.mark.slow
async def test_streams_stay_on_one_backend_and_move_once_it_is_killed(
    fleet: Fleet, ring: Balancer, clip_frames: list[bytes]
) -> None:
    a, b = backend_id(fleet.url("a")), backend_id(fleet.url("b"))
    streams = streams_on_both(a, b)
    transport = Upstreams()
    results: dict[str, list[StreamResult]] = defaultdict(list)
    lost: list[LostFrame] = []
    everyone_midway = asyncio.Event()

    async def feed(client: AsyncDetectionClient, stream: str) -> None:
        async for result in client.track(stream, clip_frames, rate=6.0, on_lost=lost.append):
            results[stream].append(result)
            if all(len(results[s]) >= KILL_AT for s in streams):
                everyone_midway.set()

    async def chaos() -> None:
        await everyone_midway.wait()
        await asyncio.to_thread(fleet.kill, "b")

    try:
        async with AsyncDetectionClient(ring.url, timeout=60.0, max_attempts=6,
                                        transport=transport) as client:
            await asyncio.gather(chaos(), *(feed(client, s) for s in streams))
        assert lost == []
        home = {}
        for stream in streams:
            got = results[stream]
            assert [r.stream.seq for r in got] == list(range(FRAMES)), stream  # no failed frame
            answered = [(seq, up) for seq, up, code in transport.seen[stream] if code == 200]
            assert [seq for seq, _ in answered] == list(range(FRAMES))
            home[stream] = answered[0][1]
            started = [r.stream.seq for r in got if r.stream.stream_started]
            if home[stream] == a:  # a's streams never moved
                assert {up for _, up in answered} == {a}, stream
                assert started == [0], stream
            else:  # b's: on b until it died, then on a, started there once
                assert home[stream] == b
                ups = [up for _, up in answered]
                moved = ups.index(a)
                assert moved >= KILL_AT and set(ups[:moved]) == {b} and set(ups[moved:]) == {a}
                assert started == [0, moved], (stream, ups, started)
        # the owners the test computed are the balancer's: ring_hash over the backends' ids
        assert [home[s] for s in streams] == [a] * PER_BACKEND + [b] * PER_BACKEND, home
        assert sum(r.detection_count for rs in results.values() for r in rs) > 0
    finally:
        fleet.ensure_ready("b")


async def test_the_websocket_feed_through_the_balancer(
    fleet: Fleet, ring: Balancer, clip_frames: list[bytes]
) -> None:
    from websockets.asyncio.client import connect

    url = ring.url.replace("http://", "ws://") + "/v1/streams/ws-cam/ws"
    async with connect(url, max_size=None) as ws:
        assert ws.response is not None
        upstream = ws.response.headers["X-Upstream"]
        assert upstream in {backend_id(fleet.url("a")), backend_id(fleet.url("b"))}
        await ws.send(json.dumps({"conf": 0.1}))
        for frame in clip_frames[:8]:
            await ws.send(frame)
        answers = [StreamResult.model_validate_json(await ws.recv()) for _ in range(8)]
    seqs = [r.stream.seq for r in answers]
    assert seqs == sorted(seqs) and len(set(seqs)) == 8
    assert {r.stream.id for r in answers} == {"ws-cam"}
    assert answers[0].stream.stream_started
    assert any(d.track_id is not None for r in answers for d in r.detections)
    async with httpx.AsyncClient(base_url=ring.url, timeout=10.0) as http:  # same backend
        r = await http.delete("/v1/streams/ws-cam")
    assert r.status_code == 204 and r.headers["X-Upstream"] == upstream


def test_the_track_command_through_the_balancer(ring: Balancer, tmp_path: Path) -> None:
    from service.demo.clips import make_clip, write_video

    video = write_video(make_clip(12, frames=16, width=320, height=240), tmp_path / "clip.mp4")
    out, annotated = tmp_path / "results.jsonl", tmp_path / "annotated.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "yoloserve", "track", str(video), "--url", ring.url,
         "--out", str(out), "--annotate", str(annotated), "--no-progress"],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(16))
    assert [r["stream"]["seq"] for r in records] == list(range(16))
    assert len({r["stream"]["id"] for r in records}) == 1
    assert any(d["track_id"] is not None for r in records for d in r["detections"])
    capture = cv2.VideoCapture(str(annotated))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 16
