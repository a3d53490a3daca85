"""The images a load sends and their request bodies: distinct JPEGs of the synthetic shapes data
set (``make_images``) and multipart ``POST /v1/detect`` bodies encoded once (``make_bodies``), so
that sending one costs almost nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BOUNDARY", "Body", "make_bodies", "make_images"]

BOUNDARY = "yoloservebenchboundary7f3a"


@dataclass(frozen=True)
class Body:
    """A ready-to-send multipart body."""

    data: bytes
    content_type: str


def make_images(count: int, width: int = 640, height: int = 480) -> list[bytes]:
    """``count`` distinct JPEGs (quality 90) of the synthetic shapes data set, resized to WxH."""
    import cv2

    from service.demo.synthetic import make_sample

    out = []
    for i in range(count):
        img = cv2.resize(make_sample(7, i).image, (width, height), interpolation=cv2.INTER_AREA)
        ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        out.append(enc.tobytes())
    return out


def make_bodies(images: Sequence[bytes], field_name: str = "image") -> list[Body]:
    """One multipart/form-data body per image, encoded once."""
    bodies = []
    for i, jpeg in enumerate(images):
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
                f"filename=\"bench_{i:05d}.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        data = head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()
        bodies.append(Body(data, f"multipart/form-data; boundary={BOUNDARY}"))
    return bodies
