"""Decoding every kind of image the service may meet, and refusing what it must refuse."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from service.engine import (
    ImageDimensionsError,
    ImageLimits,
    ImageTooLarge,
    InvalidImage,
    decode_image,
)
from tests.engine.images import bundled_photo, shapes_image

BASE = shapes_image(3, (120, 90))  # BGR, 120 wide, 90 high


def _pil(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb() -> Image.Image:
    return Image.fromarray(BASE[:, :, ::-1].copy())


def _png_claiming(width: int, height: int, payload: int = 100_000) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(np.random.default_rng(0).bytes(payload), 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("jpeg", _pil(_rgb(), "JPEG", quality=95)),
        ("png", _pil(_rgb(), "PNG")),
        ("webp", _pil(_rgb(), "WEBP", lossless=True)),
        ("bmp", _pil(_rgb(), "BMP")),
        ("tiff", _pil(_rgb(), "TIFF")),
        ("gif", _pil(_rgb(), "GIF")),
        ("grey-jpeg", _pil(_rgb().convert("L"), "JPEG")),
        ("grey-png", _pil(_rgb().convert("L"), "PNG")),
        ("rgba-png", _pil(_rgb().convert("RGBA"), "PNG")),
        ("palette-png", _pil(_rgb().convert("P"), "PNG")),
        ("cmyk-jpeg", _pil(_rgb().convert("CMYK"), "JPEG")),
        ("png-16bit", cv2.imencode(".png", BASE.astype(np.uint16) * 257)[1].tobytes()),
        ("grey-png-16bit", cv2.imencode(".png", BASE[:, :, 0].astype(np.uint16) * 257)[1].tobytes()),
    ],
)
def test_decodes_to_8bit_bgr(name: str, data: bytes) -> None:
    img = decode_image(data)
    assert img.dtype == np.uint8 and img.shape == (90, 120, 3), name
    if name in {"png", "webp", "bmp", "tiff", "rgba-png"}:  # lossless colour formats: exact pixels
        assert np.array_equal(img, BASE), name
    if name == "png-16bit":  # the high byte is kept, as Ultralytics does
        assert np.abs(img.astype(int) - BASE).max() <= 1


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = _pil(_rgb(), "JPEG", exif=exif.tobytes())
    assert decode_image(data).shape == (120, 90, 3)


def test_real_photo_matches_opencv() -> None:
    data = bundled_photo("bus.jpg").read_bytes()
    ours = decode_image(data)
    assert np.array_equal(ours, cv2.imread(str(bundled_photo("bus.jpg"))))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("empty", b""),
        ("text", b"this is not an image, just text named photo.jpg\n" * 10),
        ("random", np.random.default_rng(1).bytes(5000)),
        ("truncated-jpeg", _pil(_rgb(), "JPEG")[:600]),
        ("truncated-png", _pil(_rgb(), "PNG")[:-200]),
        ("header-only-png", _pil(_rgb(), "PNG")[:40]),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"></svg>'),
        ("pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n"),
        ("ico", _pil(_rgb().resize((64, 64)), "ICO")),
    ],
)
def test_refuses_non_images(name: str, data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data)


@pytest.mark.parametrize("size", [(1, 1), (10000, 10), (31, 500), (8193, 40)])
def test_refuses_sides_out_of_range(size: tuple[int, int]) -> None:
    data = _pil(Image.new("RGB", size), "PNG")
    with pytest.raises(ImageDimensionsError):
        decode_image(data)


def test_pixel_bomb_refused_from_header_fast_without_allocating() -> None:
    data = _png_claiming(20000, 20000)
    assert len(data) < 110_000
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge):
        decode_image(data)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.05
    assert peak < 5 * 1024 * 1024  # nothing near the 1.2 GB the pixels would need


def test_pixel_limit_checked_before_side_limits() -> None:
    limits = ImageLimits(max_pixels=100 * 100, min_side=32, max_side=8192)
    with pytest.raises(ImageTooLarge):
        decode_image(_pil(Image.new("RGB", (200, 200)), "PNG"), limits)
