"""A compact binary encoding of one image's detections, for the shared result cache.

    header  <B H I I H   format version, batch size, width, height, count
    item    <H d d d d d class id, confidence, x_min, y_min, x_max, y_max   (42 bytes)

Class names are not stored: the key includes the model's version, whose classes name the ids.
Numbers keep double precision, so that an answer from Redis equals the one computed.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from service.engine.types import Detection, Detections

__all__ = ["CodecError", "decode", "encode"]

_VERSION = 1
_HEADER = struct.Struct("<BHIIH")
_ITEM = struct.Struct("<Hddddd")


class CodecError(ValueError):
    """Bytes that are not an entry of this format (another version wrote them, or garbage)."""


def encode(detections: Detections, batch_size: int) -> bytes:
    rows = zip(detections.class_ids.tolist(), detections.scores.tolist(),
               detections.boxes.tolist(), strict=True)
    parts = [_HEADER.pack(_VERSION, min(batch_size, 0xFFFF), detections.width, detections.height,
                          len(detections))]
    parts += [_ITEM.pack(c, s, *box) for c, s, box in rows]
    return b"".join(parts)


def decode(data: bytes, classes: Mapping[int, str]) -> tuple[Detections, int]:
    """The detections and the size of the batch that computed them."""
    try:
        version, batch_size, width, height, count = _HEADER.unpack_from(data)
        if version != _VERSION or len(data) != _HEADER.size + count * _ITEM.size:
            raise CodecError(f"not a version-{_VERSION} entry of {count} detections")
        items = []
        for cid, conf, x1, y1, x2, y2 in _ITEM.iter_unpack(data[_HEADER.size:]):
            items.append(Detection(cid, classes.get(cid, str(cid)), conf, x1, y1, x2, y2))
    except struct.error as exc:
        raise CodecError(str(exc)) from exc
    return Detections.from_items(width, height, items), batch_size
