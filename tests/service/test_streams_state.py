"""A stream's tracker apart from any process: its lost-track timeout in seconds of the stream's own
clock (``timestamp_ms``), its state saved as bytes and resumed exactly (tracks of rotated boxes
too, and state saved before tracks had an angle), and the owner of a stream among worker
processes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.demo.clips import make_clip
from service.engine import Detections, DetectParams, Engine
from service.runtime.streams.clock import StreamClock
from service.runtime.streams.ownership import owner_of
from service.runtime.streams.peers import pack_frame, tracking_from, tracking_reply, unpack_frame
from service.runtime.streams.snapshot import (
    SnapshotError,
    StreamSnapshot,
    decode_snapshot,
    encode_snapshot,
)
from service.runtime.streams.table import FrameDetections, Tracking
from service.runtime.streams.tracking import TRACK_RECORD, Tracker, TrackerSettings
from tests.conftest import MODELS

BOX = np.array([[100.0, 100.0, 160.0, 180.0]], np.float32)
SCORE, CLASS = np.array([0.9], np.float32), np.array([0], np.int64)
NOTHING = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def _track_id_after_absence(fps: float, absent_s: float, *, timestamps: bool) -> tuple[int, int]:
    """A box seen for 1 s, gone for ``absent_s`` seconds (frames with nothing seen), then back:
    its track ids before and after."""
    tracker = Tracker(TrackerSettings())  # track_buffer 30: 1 s at the nominal 30 frames/s
    frame, ids = 0, []

    def step(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> None:
        nonlocal frame
        if timestamps:
            tracker.tick(frame * 1000.0 / fps)
        ids.append([t.track_id for t in tracker.update(boxes, scores, classes, None)])
        frame += 1

    for _ in range(int(fps)):
        step(BOX, SCORE, CLASS)
    before = ids[-1][0]
    for _ in range(round(absent_s * fps)):
        step(*NOTHING)
    step(BOX, SCORE, CLASS)
    step(BOX, SCORE, CLASS)  # a new track is confirmed on its second frame
    return before, ids[-1][0]


@pytest.mark.parametrize("fps", [5.0, 30.0])
def test_a_lost_track_is_kept_for_a_second_of_the_streams_own_clock(fps: float) -> None:
    before, after = _track_id_after_absence(fps, 0.6, timestamps=True)
    assert after == before  # 0.6 s: the same track
    before, after = _track_id_after_absence(fps, 1.6, timestamps=True)
    assert after != before  # 1.6 s: the track was dropped, a new one started


def test_without_timestamps_the_timeout_counts_frames() -> None:
    # at 5 frames/s, 1.6 s is 8 frames: within the 30 frames of the buffer
    before, after = _track_id_after_absence(5.0, 1.6, timestamps=False)
    assert after == before


def test_the_clock_counts_the_frames_a_gap_in_the_timestamps_left_out() -> None:
    clock = StreamClock()
    assert clock.advance(0.0) is None
    assert [clock.advance(t) for t in (200.0, 400.0, 600.0)] == [0, 0, 0]
    assert clock.advance(1400.0) == 3  # 800 ms at 200 ms a frame: three frames missing
    assert clock.fps == pytest.approx(5.0)
    assert clock.advance(1400.0) is None  # not after the last: the clock cannot tell


@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
def test_a_tracker_saved_as_bytes_goes_on_exactly_as_the_one_that_was_never_saved(kind: str) -> None:
    rng = np.random.default_rng(3)
    frames = []
    for f in range(40):
        boxes = np.array([[10 + i * 50 + f * 2, 20 + i * 10 + f, 40 + i * 50 + f * 2, 60 + i * 10 + f]
                          for i in range(5)], np.float32)
        keep = rng.random(5) > 0.25
        scores = (0.5 + 0.5 * rng.random(5)).astype(np.float32)
        frames.append((boxes[keep], scores[keep], np.zeros(int(keep.sum()), np.int64)))
    settings = TrackerSettings(tracker=kind, gmc_method="none" if kind == "botsort" else None)
    straight, resumed = Tracker(settings), Tracker(settings)
    for f, (boxes, scores, classes) in enumerate(frames):
        if f in (12, 25):
            data = encode_snapshot(StreamSnapshot(f, f, resumed.export()))
            assert data[:4] == b"YST2" and b"pickle" not in data
            snap = decode_snapshot(data)
            assert (snap.last_seq, snap.frames) == (f, f)
            resumed = Tracker.restore(snap.tracker)
        stamp = f * 100.0
        straight.tick(stamp)
        resumed.tick(stamp)
        assert resumed.update(boxes, scores, classes, None) == \
            straight.update(boxes, scores, classes, None), f"frame {f}"
    assert straight.alive() > 0


@pytest.fixture(scope="module")
def obb_frames() -> list[Detections]:
    """The oriented-box demo model's detections in each frame of a clip of rotated shapes."""
    engine = Engine.load(MODELS / "demo-obb.onnx", backend="onnx", device="cpu", precision="fp32")
    c = make_clip(7, frames=30, width=416, height=320, objects=4)
    return [engine.infer([engine.prepare_array(frame)], [DetectParams(conf=0.1)]).detections[0]
            for frame in c.frames]


@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
def test_a_tracker_of_rotated_boxes_saved_mid_clip_goes_on_exactly(
        kind: str, obb_frames: list[Detections]) -> None:
    settings = TrackerSettings(tracker=kind, gmc_method="none" if kind == "botsort" else None)
    straight, resumed = Tracker(settings), Tracker(settings)
    tracked = 0
    for f, dets in enumerate(obb_frames):
        if f == 15:
            state = resumed.export()
            assert len(state.tracks) and not np.isnan(state.tracks["angle"]).any()
            snap = decode_snapshot(encode_snapshot(StreamSnapshot(f, f, state)))
            resumed = Tracker.restore(snap.tracker)
        frame = (dets.boxes, dets.scores, dets.class_ids, None, dets.rotated)
        ours = resumed.update(*frame)
        assert ours == straight.update(*frame), f"frame {f}"
        assert all(t.rotated is not None for t in ours)
        tracked += len(ours) if f > 15 else 0
    assert tracked > 20


def test_a_state_saved_before_tracks_had_an_angle_is_read_and_goes_on_exactly() -> None:
    boxes = [np.array([[10 + i * 60 + f * 3, 20 + f, 50 + i * 60 + f * 3, 70 + f] for i in range(3)],
                      np.float32) for f in range(12)]
    scores, classes = np.full(3, 0.9, np.float32), np.zeros(3, np.int64)
    straight = Tracker(TrackerSettings())
    for b in boxes[:6]:
        straight.update(b, scores, classes, None)
    # YST1: the same header, rows without the last field (the angle)
    data = encode_snapshot(StreamSnapshot(5, 6, straight.export()))
    names = [n for n in TRACK_RECORD.names or () if n != "angle"]
    old = np.dtype([(n, TRACK_RECORD[n]) for n in names])
    rows = straight.export().tracks
    legacy = np.zeros(len(rows), old)
    for name in names:
        legacy[name] = rows[name]
    header = data[4:len(data) - rows.nbytes]
    snap = decode_snapshot(b"YST1" + header + legacy.tobytes())
    assert old.itemsize == 643 and np.isnan(snap.tracker.tracks["angle"]).all()
    resumed = Tracker.restore(snap.tracker)
    for b in boxes[6:]:
        assert resumed.update(b, scores, classes, None) == straight.update(b, scores, classes, None)
    assert straight.alive() == 3


@pytest.mark.parametrize("data", [b"", b"garbage", b"YST1\xff\xff\xff\xff{}",
                                  b'YST1\x02\x00\x00\x00{}', b'YST1\x0b\x00\x00\x00{"tracks":1}',
                                  b'YST2\x0b\x00\x00\x00{"tracks":1}', b"YST3\x02\x00\x00\x00{}"])
def test_bytes_that_are_not_a_saved_stream_are_refused(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode_snapshot(data)


def test_rotated_boxes_cross_to_a_streams_owner_and_back_whole(obb_frames: list[Detections]) -> None:
    """Between workers: the frame (its rotated boxes and pixels) and the tracked boxes."""
    dets = obb_frames[0]
    assert dets.rotated is not None and len(dets) > 1
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    header, body = pack_frame(FrameDetections(dets.boxes, dets.scores, dets.class_ids, image, 5.0,
                                              dets.rotated))
    frame = unpack_frame(orjson.loads(orjson.dumps(header)), body)
    assert frame.rotated is not None and np.array_equal(frame.rotated, dets.rotated)
    assert np.array_equal(frame.boxes, dets.boxes) and np.array_equal(frame.classes, dets.class_ids)
    assert frame.image is not None and np.array_equal(frame.image, image)
    tracker = Tracker(TrackerSettings())
    tracked = tracker.update(frame.boxes, frame.scores, frame.classes, None, frame.rotated)
    assert tracked and all(t.rotated is not None for t in tracked)
    sent = Tracking(tracked, True)
    assert tracking_from(orjson.loads(orjson.dumps(tracking_reply(sent)))) == sent
    plain = unpack_frame(*pack_frame(FrameDetections(dets.boxes, dets.scores, dets.class_ids, None,
                                                     None)))
    assert plain.rotated is None and np.array_equal(plain.boxes, dets.boxes)


def test_the_owner_of_a_stream_depends_on_its_id_and_the_live_workers_alone() -> None:
    streams = [f"cam-{i}" for i in range(400)]
    four = {s: owner_of(s, [0, 1, 2, 3]) for s in streams}
    assert four == {s: owner_of(s, [3, 2, 1, 0]) for s in streams}
    assert set(four.values()) == {0, 1, 2, 3}
    without_2 = {s: owner_of(s, [0, 1, 3]) for s in streams}
    # only worker 2's streams move
    assert all(without_2[s] == four[s] for s in streams if four[s] != 2)
