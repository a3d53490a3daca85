"""Video streams through the service: seq order, limits, expiry, listing and deleting, JSON frames."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from harness.procs import await_until
from tests.service.conftest import app_client
from tests.service.streams_support import clip, encoded


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return encoded(clip(11))[:8]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(cache_enabled=False, max_streams=3) as c:
        yield c


pytestmark = pytest.mark.asyncio(loop_scope="module")


async def post(client: httpx.AsyncClient, stream_id: str, seq: int, data: bytes,
               **fields: str) -> httpx.Response:
    return await client.post(f"/v1/streams/{stream_id}/frames",
                             files={"frame": ("frame.jpg", data, "image/jpeg")},
                             data={"seq": str(seq), **fields})


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_frames_in_seq_order_and_a_stale_seq_is_409(client: httpx.AsyncClient,
                                                          frames: list[bytes]) -> None:
    first = await post(client, "order", 5, frames[0])
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["stream"] == {"id": "order", "seq": 5, "stream_started": True, "timestamp_ms": None}
    assert body["detection_count"] == len(body["detections"]) > 0
    assert all("track_id" in d for d in body["detections"])
    assert {d["track_id"] for d in body["detections"] if d["confidence"] >= 0.25} - {None}
    for stale in (5, 3):  # the same seq again, or an older one
        r = await post(client, "order", stale, frames[1])
        assert r.status_code == 409 and r.json()["error"]["code"] == "stale_frame"
    gap = await post(client, "order", 9, frames[1])  # frames 6-8 never came: time passed
    assert gap.status_code == 200 and gap.json()["stream"] == {"id": "order", "seq": 9,
                                                               "stream_started": False, "timestamp_ms": None}
    listed = (await client.get("/v1/streams")).json()["streams"]
    (entry,) = [s for s in listed if s["id"] == "order"]
    assert entry["frames"] == 2 and entry["tracks"] >= 1 and entry["last_seen"]
    text = (await client.get("/metrics")).text
    assert metric(text, "stream_frames_dropped_total", reason="stale") >= 2
    assert metric(text, "stream_frames_total") >= 2
    await client.delete("/v1/streams/order")


async def test_a_frame_waits_for_a_lower_seq_in_flight(client: httpx.AsyncClient,
                                                       frames: list[bytes]) -> None:
    # seq 2 is sent first; seq 1 comes while 2 is being detected, and is tracked first
    later, earlier = await asyncio.gather(post(client, "reordered", 2, frames[1]),
                                          post(client, "reordered", 1, frames[0]))
    assert later.status_code == earlier.status_code == 200, (later.text, earlier.text)
    assert earlier.json()["stream"]["stream_started"] is True
    assert later.json()["stream"]["stream_started"] is False
    await client.delete("/v1/streams/reordered")


async def test_json_frames_answer_as_multipart_ones(client: httpx.AsyncClient,
                                                    frames: list[bytes]) -> None:
    answers: dict[str, list[Any]] = {"multipart": [], "json": []}
    for seq, data in enumerate(frames[:4]):
        r = await post(client, "as-multipart", seq, data, tracker="botsort", track_buffer="10")
        answers["multipart"].append(r.json()["detections"])
        r = await client.post("/v1/streams/as-json/frames", json={
            "frame": base64.b64encode(data).decode(), "seq": seq, "timestamp_ms": 40.0 * seq,
            "tracker": "botsort", "track_buffer": 10})
        assert r.status_code == 200, r.text
        answers["json"].append(r.json()["detections"])
    assert answers["json"] == answers["multipart"]
    for stream_id in ("as-multipart", "as-json"):
        assert (await client.delete(f"/v1/streams/{stream_id}")).status_code == 204


@pytest.mark.parametrize(("path", "fields"), [
    ("/v1/streams/bad%20id/frames", {"seq": "0"}),
    (f"/v1/streams/{'x' * 129}/frames", {"seq": "0"}),
    ("/v1/streams/ok/frames", {}),  # no seq
    ("/v1/streams/ok/frames", {"seq": "-1"}),
    ("/v1/streams/ok/frames", {"seq": "0", "tracker": "sort"}),
    ("/v1/streams/ok/frames", {"seq": "0", "track_high_thresh": "2"}),
    ("/v1/streams/ok/frames", {"seq": "0", "colour": "red"}),
])
async def test_bad_requests_are_422(client: httpx.AsyncClient, frames: list[bytes], path: str,
                                    fields: dict[str, str]) -> None:
    r = await client.post(path, files={"frame": ("f.jpg", frames[0], "image/jpeg")}, data=fields)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
    assert "ok" not in [s["id"] for s in (await client.get("/v1/streams")).json()["streams"]]


async def test_past_max_streams_a_new_stream_is_503(client: httpx.AsyncClient,
                                                    frames: list[bytes]) -> None:
    for name in ("a", "b", "c"):
        assert (await post(client, f"full-{name}", 0, frames[0])).status_code == 200
    refused = await post(client, "full-d", 0, frames[0])
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "too_many_streams"
    assert int(refused.headers["retry-after"]) >= 1
    # the streams held are still served, and deleting one makes room
    assert (await post(client, "full-a", 1, frames[1])).status_code == 200
    assert (await client.delete("/v1/streams/full-b")).status_code == 204
    admitted = await post(client, "full-d", 0, frames[0])
    assert admitted.status_code == 200 and admitted.json()["stream"]["stream_started"]
    for name in ("a", "c", "d"):
        await client.delete(f"/v1/streams/full-{name}")


async def test_delete_and_list(client: httpx.AsyncClient, frames: list[bytes]) -> None:
    missing = await client.delete("/v1/streams/never-seen")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "stream_not_found"
    await post(client, "gone", 0, frames[0])
    await post(client, "gone", 1, frames[1])
    assert "gone" in [s["id"] for s in (await client.get("/v1/streams")).json()["streams"]]
    deleted = await client.delete("/v1/streams/gone")
    assert deleted.status_code == 204 and not deleted.content
    assert "gone" not in [s["id"] for s in (await client.get("/v1/streams")).json()["streams"]]
    again = await post(client, "gone", 1, frames[1])  # a new stream: seq 1 is not stale there
    assert again.status_code == 200 and again.json()["stream"]["stream_started"]
    await client.delete("/v1/streams/gone")


async def test_idle_streams_expire_after_the_ttl(frames: list[bytes]) -> None:
    async with app_client(cache_enabled=False, stream_ttl_s=0.5) as c:
        for seq in range(2):
            assert (await post(c, "idle", seq, frames[seq])).status_code == 200

        async def gone() -> bool:
            return not (await c.get("/v1/streams")).json()["streams"]

        await await_until(gone, 10.0, "the idle stream to expire")
        text = (await c.get("/metrics")).text
        assert metric(text, "streams_ended_total", reason="expired") == 1
        assert metric(text, "streams_active") == 0
        back = await post(c, "idle", 2, frames[2])
        assert back.status_code == 200 and back.json()["stream"]["stream_started"]


async def test_json_frame_fields_have_json_types(client: httpx.AsyncClient,
                                                 frames: list[bytes]) -> None:
    frame = base64.b64encode(frames[0]).decode()
    for bad in ({"seq": "1"}, {"seq": 1, "fuse_score": "yes"}, {"seq": 1, "extra": 1}, {}):
        r = await client.post("/v1/streams/typed/frames", json={"frame": frame, **bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", bad
    r = await client.post("/v1/streams/typed/frames", json={"frame": "not base64!", "seq": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"


async def test_the_frames_timestamp_is_echoed(client: httpx.AsyncClient, frames: list[bytes]) -> None:
    r = await post(client, "stamped", 0, frames[0], timestamp_ms="1733400000123.5")
    assert r.status_code == 200, r.text
    assert r.json()["stream"]["timestamp_ms"] == 1733400000123.5
    r = await client.post("/v1/streams/stamped/frames", json={
        "frame": base64.b64encode(frames[1]).decode(), "seq": 1, "timestamp_ms": 1733400000156.8})
    assert r.status_code == 200, r.text
    assert r.json()["stream"]["timestamp_ms"] == 1733400000156.8
    assert (await client.delete("/v1/streams/stamped")).status_code == 204
