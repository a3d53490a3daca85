"""Safe image decoding: the header is read first, limits are checked before any pixel is decoded.

Pixels are decoded the way Ultralytics reads files (``cv2.imdecode`` with ``IMREAD_COLOR``: EXIF
orientation applied, grey, alpha, 16-bit and palette images turned into 8-bit BGR), so that the
service's answer equals ``YOLO.predict`` on the same file. Pillow decodes what OpenCV cannot.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from service.engine.errors import ImageDimensionsError, ImageTooLarge, InvalidImage

__all__ = ["IMAGE_SUFFIXES", "SUPPORTED_FORMATS", "ImageHeader", "ImageLimits", "decode_image",
           "decode_reduced", "image_files", "probe_image"]

_PIL_OPEN: Callable[..., Any] = Image.open


def _open(data: bytes) -> Any:
    """Pillow's own ``Image.open``. Importing Ultralytics replaces it with a wrapper that, on an
    unidentified file, tries to pip-install a HEIF plugin: a network call per bad upload."""
    opener = _PIL_OPEN
    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is not None and opener is getattr(patches, "image_open", None):
        opener = patches._image_open
    return opener(io.BytesIO(data))


SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def image_files(specs: Iterable[Path]) -> list[Path]:
    """Files as given, and the images under folders (recursively), in a stable order."""
    out: list[Path] = []
    for spec in specs:
        if spec.is_dir():
            out.extend(sorted(p for p in spec.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                              and p.is_file()))
        else:
            out.append(spec)
    return out


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 8192 * 8192
    min_side: int = 32
    max_side: int = 8192


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


def probe_image(data: bytes, limits: ImageLimits) -> ImageHeader:
    """Read only the header; refuse what is not a supported image or is outside the limits."""
    if not data:
        raise InvalidImage("the image is empty")
    try:
        with _open(data) as im:
            header = ImageHeader(str(im.format), int(im.size[0]), int(im.size[1]))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image has more than {limits.max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage("the data is not a readable image") from exc
    if header.format not in SUPPORTED_FORMATS:
        raise InvalidImage(f"unsupported image format {header.format}; send JPEG, PNG, WebP, BMP or TIFF")
    if header.width * header.height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {header.width}x{header.height} px, over the limit of {limits.max_pixels} pixels"
        )
    for side in (header.width, header.height):
        if not limits.min_side <= side <= limits.max_side:
            raise ImageDimensionsError(
                f"the image is {header.width}x{header.height} px; each side must be within "
                f"{limits.min_side}-{limits.max_side} px"
            )
    return header


def _jpeg_complete(data: bytes) -> bool:
    """A JPEG whose last scan is not followed by an end-of-image marker was cut short."""
    last_scan = data.rfind(b"\xff\xda")
    return last_scan >= 0 and data.find(b"\xff\xd9", last_scan) >= 0


def _png_complete(data: bytes) -> bool:
    return data.rfind(b"IEND", max(0, len(data) - 64)) >= 0


def _decode_with_pillow(data: bytes) -> NDArray[np.uint8] | None:
    try:
        with _open(data) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
    except (OSError, ValueError, SyntaxError):
        return None


_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
            (2, cv2.IMREAD_REDUCED_COLOR_2))


def decode_reduced(
    data: bytes, size: int, limits: ImageLimits | None = None
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """Decode a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) whose long side is still at least
    ``size``; other images in full. Returns the pixels and the image's full (width, height)."""
    limits = limits or ImageLimits()
    header = probe_image(data, limits)
    long_side = max(header.width, header.height)
    flag = next((f for factor, f in _REDUCED if long_side // factor >= size), None)
    if header.format not in {"JPEG", "MPO"} or flag is None:
        img = decode_image(data, limits, header)
        return img, (img.shape[1], img.shape[0])
    if not _jpeg_complete(data):
        raise InvalidImage("the JPEG data is truncated")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error:
        decoded = None
    if decoded is None or decoded.ndim != 3:
        img = decode_image(data, limits, header)
        return img, (img.shape[1], img.shape[0])
    # EXIF orientation may have turned the picture: the full size follows the decoded one's
    turned = (decoded.shape[1] > decoded.shape[0]) != (header.width > header.height)
    full = (header.height, header.width) if turned else (header.width, header.height)
    return np.asarray(decoded, np.uint8), full


def decode_image(data: bytes, limits: ImageLimits | None = None,
                 header: ImageHeader | None = None) -> NDArray[np.uint8]:
    """Decode ``data`` into an 8-bit BGR ``HxWx3`` array, or raise an ``ImageError``."""
    limits = limits or ImageLimits()
    header = header or probe_image(data, limits)
    if header.format in {"JPEG", "MPO"} and not _jpeg_complete(data):
        raise InvalidImage("the JPEG data is truncated")
    if header.format == "PNG" and not _png_complete(data):
        raise InvalidImage("the PNG data is truncated")
    buf = np.frombuffer(data, dtype=np.uint8)
    img: NDArray[np.uint8] | None = None
    if header.format != "GIF":
        try:
            decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            img = None if decoded is None else np.asarray(decoded, np.uint8)
        except cv2.error:
            img = None
    if img is None:
        img = _decode_with_pillow(data)
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InvalidImage("the image could not be decoded: corrupt data or unsupported pixel format")
    return img
