"""Streams that outlive their backend: two services sharing a real Redis behind ``yoloserve lb
--policy ring_hash``. SIGKILL one mid-clip and its streams go on on the other with the same track
ids as an uninterrupted run (``stream_started: false``, no failed frame); kill Redis mid-clip and
no frame fails, the tracks going on in their process."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from clients import AsyncDetectionClient, LostFrame
from harness.procs import Balancer, RedisServer, start_all, wait_all_healthy
from loadbalancer.hashing import Ring, key_hash
from service.demo.clips import Clip, identity_switches
from tests.integration.stack import SERVE_ARGS, SERVE_ENV, START_TIMEOUT, Fleet
from tests.service.streams_support import boxes_only, service_tracks
from wire.schemas import StreamResult

cv2 = pytest.importorskip("cv2")
pytestmark = pytest.mark.slow

FRAMES = 24
KILL_AT = 8  # results in, in every stream, before the kill
PER_BACKEND = 2


class RedisFleet(Fleet):
    """The package's fleet, each service given the Redis URL."""

    def __init__(self, model: Path, logdir: Path, redis_url: str) -> None:
        super().__init__(model, logdir)
        self.redis_url = redis_url

    def _spawn(self, name: str, port: int | None):  # type: ignore[no-untyped-def]
        from harness.procs import Service

        self._incarnations[name] += 1
        log = self.logdir / f"{name}-{self._incarnations[name]}.log"
        env = {**SERVE_ENV, "YOLOSERVE_REDIS_URL": self.redis_url}
        self.procs[name] = Service(name, *SERVE_ARGS, "--model", str(self.model), port=port,
                                   env=env, stdout=log, ready_timeout=START_TIMEOUT)
        return self.procs[name]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if RedisServer.binary() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer("streams-redis").start(wait=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, fleet: Fleet,
           redis_server: RedisServer) -> Iterator[RedisFleet]:
    pair = RedisFleet(fleet.model, tmp_path_factory.mktemp("resume-logs"), redis_server.redis_url)
    try:
        pair.start("a", "b")
        yield pair
    finally:
        pair.stop_all()


@pytest.fixture(scope="module")
def balancer(shared: RedisFleet) -> Iterator[Balancer]:
    lb = Balancer("resume-lb", [shared.url("a"), shared.url("b")], "--policy", "ring_hash",
                  "--health-interval", "0.5", "--per-try-timeout", "30", "--log-level", "warning",
                  cli=("yoloserve", "lb"), stderr=None)
    start_all([lb], 60)
    yield lb
    lb.stop()


@pytest.fixture(scope="module")
def clip_frames() -> tuple[Clip, list[bytes]]:
    from service.demo.clips import make_clip

    clip = make_clip(11, frames=FRAMES, width=320, height=240)
    return clip, [bytes(cv2.imencode(".jpg", f)[1]) for f in clip.frames]


def _ids(url: str) -> str:
    return url.removeprefix("http://")


def streams_on_both(a: str, b: str) -> dict[str, list[str]]:
    ring = Ring([(a, 1), (b, 1)])
    owned: dict[str, list[str]] = {a: [], b: []}
    for i in range(1000):
        stream = f"resume-{i}"
        home = owned[ring.owner(key_hash(stream.encode()))]
        if len(home) < PER_BACKEND:
            home.append(stream)
        if all(len(v) == PER_BACKEND for v in owned.values()):
            break
    return owned


async def _uninterrupted(url: str, stream: str, frames: list[bytes]) -> list[StreamResult]:
    async with AsyncDetectionClient(url, timeout=60.0) as client:
        return [r async for r in client.track(stream, frames)]


def _assert_same_ids(ours: list[StreamResult], reference: list[StreamResult], where: str) -> None:
    """The same track ids on the same boxes (within a pixel) in every frame."""
    for f, (a, b) in enumerate(zip(service_tracks([r.model_dump() for r in ours]),
                                   service_tracks([r.model_dump() for r in reference]),
                                   strict=True)):
        assert a.keys() == b.keys(), f"{where} frame {f}: ids {sorted(a)}, uninterrupted {sorted(b)}"
        for tid, (cls, box) in a.items():
            assert cls == b[tid][0] and max(abs(x - y) for x, y in zip(box, b[tid][1], strict=True)) <= 1.0, \
                f"{where} frame {f}: track {tid} at {box}, uninterrupted {b[tid]}"


async def _run(url: str, streams: list[str], frames: list[bytes], chaos: object
               ) -> tuple[dict[str, list[StreamResult]], list[LostFrame]]:
    results: dict[str, list[StreamResult]] = defaultdict(list)
    lost: list[LostFrame] = []
    midway = asyncio.Event()

    async def feed(client: AsyncDetectionClient, stream: str) -> None:
        async for result in client.track(stream, frames, rate=6.0, on_lost=lost.append):
            results[stream].append(result)
            if all(len(results[s]) >= KILL_AT for s in streams):
                midway.set()

    async def strike() -> None:
        await midway.wait()
        await asyncio.to_thread(chaos)  # type: ignore[arg-type]

    async with AsyncDetectionClient(url, timeout=60.0, max_attempts=6) as client:
        await asyncio.gather(strike(), *(feed(client, s) for s in streams))
    return results, lost


async def test_a_killed_backends_streams_resume_with_their_track_ids(
        shared: RedisFleet, balancer: Balancer, redis_server: RedisServer,
        clip_frames: tuple[Clip, list[bytes]]) -> None:
    clip, frames = clip_frames
    wait_all_healthy(balancer, 60)
    reference = await _uninterrupted(shared.url("a"), "reference-kill", frames)
    a, b = _ids(shared.url("a")), _ids(shared.url("b"))
    owned = streams_on_both(a, b)
    streams = owned[a] + owned[b]
    try:
        results, lost = await _run(balancer.url, streams, frames, lambda: shared.kill("b"))
        assert lost == []
        truth_switches = identity_switches(clip.truth, boxes_only(
            service_tracks([r.model_dump() for r in reference])))
        for stream in streams:
            got = results[stream]
            assert [r.stream.seq for r in got] == list(range(FRAMES)), stream  # no failed frame
            assert [r.stream.stream_started for r in got] == [True] + [False] * (FRAMES - 1), stream
            _assert_same_ids(got, reference, stream)
            ours = identity_switches(clip.truth, boxes_only(service_tracks([r.model_dump() for r in got])))
            assert ours <= truth_switches, stream
        # b's streams were saved in Redis, and a holds them now
        client = redis.Redis.from_url(redis_server.redis_url)
        assert all(client.exists(f"yoloserve:stream:{s}") for s in streams)
        async with httpx.AsyncClient(base_url=shared.url("a"), timeout=10.0) as http:
            held = {s["id"] for s in (await http.get("/v1/streams")).json()["streams"]}
        assert set(owned[b]) <= held
    finally:
        shared.ensure_ready("b")
        wait_all_healthy(balancer, 60)


async def test_redis_killed_mid_clip_fails_no_frame(
        shared: RedisFleet, balancer: Balancer, redis_server: RedisServer,
        clip_frames: tuple[Clip, list[bytes]]) -> None:
    _, frames = clip_frames
    wait_all_healthy(balancer, 60)
    reference = await _uninterrupted(shared.url("b"), "reference-outage", frames)
    a, b = _ids(shared.url("a")), _ids(shared.url("b"))
    streams = [f"outage-{s}" for owned in streams_on_both(a, b).values() for s in owned]
    results, lost = await _run(balancer.url, streams, frames, redis_server.kill)
    assert lost == []
    for stream in streams:
        got = results[stream]
        assert [r.stream.seq for r in got] == list(range(FRAMES)), stream
        assert [r.stream.stream_started for r in got] == [True] + [False] * (FRAMES - 1), stream
        _assert_same_ids(got, reference, stream)
