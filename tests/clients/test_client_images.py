"""Encoding what the caller passes, once; and the light import."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients import InvalidRequest
from clients._images import content_type_of, encode_image


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


async def test_bytes_pass_through() -> None:
    encoded = await encode_image(bytearray(b"\xff\xd8\xff\xe0x"))
    assert (encoded.name, encoded.data, encoded.content_type) == (
        "image",
        b"\xff\xd8\xff\xe0x",
        "image/jpeg",
    )
    assert encoded.as_file() == ("image", b"\xff\xd8\xff\xe0x", "image/jpeg")
    assert (await encode_image(memoryview(b"abc"), name="a.webp")).content_type == "image/webp"


@pytest.mark.parametrize(
    ("data", "name", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n...", "x", "image/png"),
        (b"GIF89a", "x", "image/gif"),
        (b"BM....", "x", "image/bmp"),
        (b"II*\x00", "x", "image/tiff"),
        (b"MM\x00*", "x", "image/tiff"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "x", "image/webp"),
        (b"????", "x.png", "image/png"),
        (b"????", "x", "application/octet-stream"),
    ],
)
def test_content_type(data: bytes, name: str, expected: str) -> None:
    assert content_type_of(data, name) == expected


async def test_path(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nrest")
    encoded = await encode_image(path)
    assert (encoded.name, encoded.content_type) == ("a.png", "image/png")
    with pytest.raises(InvalidRequest, match="cannot read") as caught:
        await encode_image(tmp_path)  # a folder
    assert caught.value.code == "unreadable_image"


async def test_bgr_array_becomes_rgb_png() -> None:
    array = np.zeros((4, 6, 3), dtype=np.uint8)
    array[..., 0] = 255  # blue, as OpenCV stores it
    encoded = await encode_image(array)
    assert (encoded.name, encoded.content_type) == ("array.png", "image/png")
    picture = decode(encoded.data)
    assert picture.size == (6, 4) and picture.getpixel((0, 0)) == (0, 0, 255)


async def test_bgra_grey_and_single_channel_arrays() -> None:
    bgra = np.zeros((2, 2, 4), dtype=np.uint8)
    bgra[..., 2] = 255
    bgra[..., 3] = 128
    assert decode((await encode_image(bgra)).data).getpixel((0, 0)) == (255, 0, 0, 128)
    grey = np.full((3, 3), 7, dtype=np.uint8)
    assert decode((await encode_image(grey)).data).getpixel((1, 1)) == 7
    single = np.full((3, 3, 1), 9, dtype=np.uint8)
    assert decode((await encode_image(single, name="s.png")).data).getpixel((1, 1)) == 9


async def test_jpeg_arrays() -> None:
    array = np.full((8, 8, 3), 200, dtype=np.uint8)
    encoded = await encode_image(array, array_format="jpeg")
    assert encoded.content_type == "image/jpeg" and encoded.data[:3] == b"\xff\xd8\xff"
    grey = await encode_image(np.zeros((8, 8), dtype=np.uint8), array_format="jpeg")
    assert decode(grey.data).mode == "L"
    bgra = await encode_image(np.zeros((8, 8, 4), dtype=np.uint8), array_format="jpeg")
    assert decode(bgra.data).mode == "RGB"


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 3), dtype=np.float32),
        np.zeros((4, 4, 2), dtype=np.uint8),
        np.zeros((4,), dtype=np.uint8),
    ],
)
async def test_unsupported_arrays(array: np.ndarray) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await encode_image(array)
    assert caught.value.code == "unsupported_array"


async def test_other_types_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="path, bytes or a numpy array"):
        await encode_image(42)  # type: ignore[arg-type]


def test_light_import() -> None:
    code = (
        "import sys, clients, clients.cli\n"
        "heavy = {'numpy', 'PIL', 'torch', 'cv2', 'ultralytics', 'fastapi'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
