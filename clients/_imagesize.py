"""An encoded image's width and height as the service sees them (EXIF orientation applied), read
from its header: the Open Inference Protocol's answer does not carry them, and ``/v1``'s
``image_dimensions`` and ``normalized_box`` need them.

JPEG (with its EXIF orientation), PNG, GIF, BMP and WebP are read here, without Pillow; any other
format through Pillow when it is installed. Unreadable: None.
"""

from __future__ import annotations

import io
import struct

__all__ = ["image_size"]

_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; not DHT, JPG, DAC
_TURNED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of the decoded, upright picture, or None."""
    try:
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return struct.unpack(">II", data[16:24])
        if data.startswith(b"GIF8"):
            return struct.unpack("<HH", data[6:10])
        if data.startswith(b"BM"):
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
    except struct.error:
        return None
    return _pillow(data)


def _jpeg(data: bytes) -> tuple[int, int] | None:
    at, orientation, size = 2, 1, None
    while at + 4 <= len(data) and size is None:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        (length,) = struct.unpack(">H", data[at + 2: at + 4])
        segment = data[at + 4: at + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            orientation = _orientation(segment[6:]) or orientation
        elif marker in _SOF:
            height, width = struct.unpack(">HH", segment[1:5])
            size = (width, height)
        at += 2 + length
    if size is None:
        return None
    return (size[1], size[0]) if orientation in _TURNED else size


def _orientation(tiff: bytes) -> int | None:
    """Tag 0x0112 of the EXIF block's first directory."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return None
    (first,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[first: first + 2])
    for i in range(count):
        entry = tiff[first + 2 + 12 * i: first + 14 + 12 * i]
        tag, _, _, value = struct.unpack(order + "HHIH", entry[:10])
        if tag == 0x0112:
            return int(value)
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    return None


def _pillow(data: bytes) -> tuple[int, int] | None:
    try:
        from PIL import Image, ImageOps  # optional: the light install has no Pillow
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as picture:
            upright = ImageOps.exif_transpose(picture)
            width, height = upright.size
    except Exception:  # whatever Pillow cannot read: the size is unknown
        return None
    return int(width), int(height)
