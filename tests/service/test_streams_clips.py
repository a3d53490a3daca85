"""The test clips: deterministic, occluding, with truth that scores trackers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from service.demo.clips import identity_switches, make_clip, write_frames, write_video
from service.demo.synthetic import CLASSES


def test_a_clip_is_a_function_of_its_seed() -> None:
    a, b, other = make_clip(3, frames=6), make_clip(3, frames=6), make_clip(4, frames=6)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    assert a.truth == b.truth
    assert not np.array_equal(a.frames[0], other.frames[0])


def test_objects_keep_their_identity_move_and_hide_each_other() -> None:
    c = make_clip(5, frames=30, width=400, height=300, objects=4)
    assert c.size == (400, 300) and len(c.frames) == len(c.truth) == 30
    assert all(f.shape == (300, 400, 3) and f.dtype == np.uint8 for f in c.frames)
    classes: dict[int, int] = {}
    for boxes in c.truth:
        for t in boxes:
            assert classes.setdefault(t.object_id, t.class_id) == t.class_id
            assert t.class_name in CLASSES
            x0, y0, x1, y1 = t.box
            assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 300
            assert 0 < t.visible <= 1
    assert len(classes) == 4
    first = {t.object_id: t.box for t in c.truth[0]}
    last = {t.object_id: t.box for t in c.truth[-1]}
    assert all(first[i] != last[i] for i in first if i in last)  # they move
    assert min(t.visible for boxes in c.truth for t in boxes) < 0.7  # and hide each other


def test_identity_switches_count_a_swap_once() -> None:
    c = make_clip(6, frames=10, objects=2)
    perfect = [{t.object_id: t.box for t in boxes} for boxes in c.truth]
    assert identity_switches(c.truth, perfect) == 0
    swapped = [{(t.object_id + 1) % 2 if f >= 5 else t.object_id: t.box for t in boxes}
               for f, boxes in enumerate(c.truth)]
    visible_after = {t.object_id for boxes in c.truth[5:] for t in boxes if t.visible >= 0.5}
    visible_before = {t.object_id for boxes in c.truth[:5] for t in boxes if t.visible >= 0.5}
    assert identity_switches(c.truth, swapped) == len(visible_after & visible_before)


def test_written_as_a_video_and_as_jpegs(tmp_path: Path) -> None:
    c = make_clip(7, frames=12, width=320, height=240)
    video = write_video(c, tmp_path / "clip.mp4")
    cap = cv2.VideoCapture(str(video))
    read = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (240, 320, 3)
        read += 1
    cap.release()
    assert read == 12
    paths = write_frames(c, tmp_path / "frames")
    assert [p.name for p in paths] == [f"{i:05d}.jpg" for i in range(12)]
    decoded = cv2.imread(str(paths[3]))
    assert decoded.shape == (240, 320, 3)
    def smooth(img: np.ndarray) -> np.ndarray:  # JPEG keeps the picture, not the pixel noise
        return cv2.GaussianBlur(img, (0, 0), 2.0).astype(int)

    assert np.abs(smooth(decoded) - smooth(c.frames[3])).mean() < 4
