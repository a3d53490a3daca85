"""Turning what the caller passes (a path, bytes or a numpy BGR array) into one upload, once.

numpy and Pillow are imported only when an array is passed; files are read and arrays encoded in a
worker thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from clients.errors import InvalidRequest

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["ArrayFormat", "EncodedImage", "ImageInput", "encode_image"]

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | npt.NDArray[Any]"
"""A path to an image file, the encoded bytes of one, or a uint8 BGR(A)/grey numpy array."""

ArrayFormat = Literal["png", "jpeg"]

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """One image ready to upload: its file name, bytes and content type."""

    name: str
    data: bytes
    content_type: str

    def as_file(self) -> tuple[str, bytes, str]:
        """The ``(filename, content, content_type)`` triple httpx takes for a multipart file."""
        return (self.name, self.data, self.content_type)


def content_type_of(data: bytes, name: str) -> str:
    """The image's MIME type from its first bytes, else from its name, else octet-stream."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


async def encode_image(
    image: ImageInput, *, name: str | None = None, array_format: ArrayFormat = "png"
) -> EncodedImage:
    """Read or encode ``image`` once; raises :class:`InvalidRequest` when it cannot be read."""
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        name = name or "image"
        return EncodedImage(name, data, content_type_of(data, name))
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        data = await asyncio.to_thread(_read_file, path)
        name = name or path.name
        return EncodedImage(name, data, content_type_of(data, name))
    if not hasattr(image, "__array_interface__"):
        raise TypeError(f"an image is a path, bytes or a numpy array, not {type(image).__name__}")
    data = await asyncio.to_thread(_encode_array, image, array_format)
    return EncodedImage(name or f"array.{array_format}", data, f"image/{array_format}")


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidRequest(f"cannot read {path}: {reason}", code="unreadable_image") from exc


def _encode_array(array: npt.NDArray[Any], array_format: ArrayFormat) -> bytes:
    import numpy as np  # only here: the light install has no numpy
    from PIL import Image

    if array.dtype != np.uint8:
        raise InvalidRequest(f"arrays must be uint8, not {array.dtype}", code="unsupported_array")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] in (3, 4):
        order = [2, 1, 0] if array.shape[2] == 3 else [2, 1, 0, 3]
        array = array[:, :, order]  # BGR(A) as OpenCV reads it -> RGB(A) as Pillow writes it
    elif array.ndim != 2:
        raise InvalidRequest(
            f"arrays must be HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA), not {array.shape}",
            code="unsupported_array",
        )
    picture = Image.fromarray(np.ascontiguousarray(array))
    buffer = io.BytesIO()
    if array_format == "jpeg":
        picture.convert("RGB" if picture.mode != "L" else "L").save(buffer, "JPEG", quality=95)
    else:
        picture.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
