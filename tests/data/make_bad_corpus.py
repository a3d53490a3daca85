"""Write the hostile-input corpus: one raw HTTP request per case plus the answer the contract demands.

    python tests/data/make_bad_corpus.py            # writes tests/data/bad/ (ignored by git)
    python tests/data/make_bad_corpus.py --out DIR  # anywhere else

Each case is ``NN-name.body`` (the exact request body) and an entry in ``manifest.json``: method,
path with query, headers, the body file, and the expected ``status`` and error ``code`` (``None``
for a 200), plus ``dimensions`` for the unusual-but-valid images that must be served. Everything is
generated from fixed seeds, so two runs write identical files. Only numpy and Pillow are needed.

The expected answers follow the contract's error table: not an image, corrupt, truncated or an
unsupported format is 400 ``invalid_image``; a side outside 32-8192 px is 400 ``image_dimensions``;
more pixels than allowed (read from the header) or a body over the limit is 413; a content type
that is neither multipart nor JSON is 415; everything wrong with the request's shape or its
parameters (types, ranges, missing/unknown/repeated fields, too many parts) is 422.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["BOUNDARY", "Case", "build_cases", "write_corpus"]

BOUNDARY = "yoloserve-bad-corpus-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"
DEFAULT_OUT = Path(__file__).resolve().parent / "bad"
MAX_BODY = 10 * 1024 * 1024  # the service's default body limit


@dataclass
class Case:
    name: str
    body: bytes
    status: int
    code: str | None
    path: str = "/v1/detect"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    dimensions: tuple[int, int] | None = None  # (width, height) a 200 must report
    why: str = ""


# -- images ----------------------------------------------------------------------------------------

def _picture(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    """A small RGB picture with a few filled shapes (deterministic)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return img


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _png_claiming(width: int, height: int) -> bytes:
    """A 10 kB PNG whose header claims ``width`` x ``height`` RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(np.random.default_rng(1).bytes(10_000), 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG with its SOF0 frame size rewritten to ``width`` x ``height``."""
    data = bytearray(_save(_picture(), "JPEG", quality=80))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _png16(mode_rgb: bool) -> bytes:
    rng = np.random.default_rng(2)
    if mode_rgb:  # Pillow cannot write 16-bit RGB; build the PNG by hand
        h, w = 64, 96
        pixels = rng.integers(0, 65535, (h, w, 3), dtype=np.uint16).astype(">u2")
        raw = b"".join(b"\0" + pixels[y].tobytes() for y in range(h))
        ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
                + _chunk(b"IEND", b""))
    grey = rng.integers(0, 65535, (64, 96), dtype=np.uint16)
    return _save(Image.fromarray(grey), "PNG")


def _animated_gif() -> bytes:
    frames = [_picture(seed=s).convert("P") for s in range(4)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _multipage_tiff() -> bytes:
    pages = [_picture(seed=s) for s in range(3)]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return _save(_picture(160, 120), "JPEG", quality=85, exif=exif)


def _svg() -> bytes:
    return (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="640" height="480">'
            b'<circle cx="100" cy="100" r="50" fill="red"/></svg>')


def _bad_crc_png() -> bytes:
    data = bytearray(_save(_picture(), "PNG"))
    idat = data.find(b"IDAT")
    data[idat + 40: idat + 200] = bytes(160)  # corrupt the compressed stream; the CRC no longer fits
    return bytes(data)


# -- bodies ----------------------------------------------------------------------------------------

Part = tuple[str, str | None, str | None, bytes]  # field name, filename, content type, data


def multipart(*parts: Part, close: bool = True) -> bytes:
    out = io.BytesIO()
    for name, filename, ctype, data in parts:
        out.write(f"--{BOUNDARY}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if ctype is not None:
            out.write(f"Content-Type: {ctype}\r\n".encode())
        out.write(b"\r\n" + data + b"\r\n")
    if close:
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def _file(data: bytes, filename: str = "image.jpg", ctype: str | None = "image/jpeg",
          *extra: Part, field_name: str = "image") -> bytes:
    return multipart((field_name, filename, ctype, data), *extra)


def _json(payload: object) -> bytes:
    return json.dumps(payload).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the cases -------------------------------------------------------------------------------------

def _image_cases(good: bytes) -> list[Case]:
    pic = _picture()
    jpeg = _save(pic, "JPEG", quality=85)
    png = _save(pic, "PNG")
    bad = [
        ("zero_byte_file", b"", 400, "invalid_image"),
        ("text_named_jpg", b"hello, I am not a picture\n" * 20, 400, "invalid_image"),
        ("truncated_jpeg_half", jpeg[: len(jpeg) // 2], 400, "invalid_image"),
        ("truncated_jpeg_header_only", jpeg[:300], 400, "invalid_image"),
        ("truncated_png", png[: len(png) * 2 // 3], 400, "invalid_image"),
        ("png_bad_crc", _bad_crc_png(), 400, "invalid_image"),
        ("png_claims_50000x50000", _png_claiming(50_000, 50_000), 413, "payload_too_large"),
        ("jpeg_claims_50000x50000", _jpeg_claiming(50_000, 50_000), 413, "payload_too_large"),
        ("png_1x1", _save(Image.new("RGB", (1, 1)), "PNG"), 400, "image_dimensions"),
        ("png_10000x10", _save(Image.new("RGB", (10_000, 10)), "PNG"), 400, "image_dimensions"),
        ("png_31x64", _save(Image.new("RGB", (31, 64)), "PNG"), 400, "image_dimensions"),
        ("svg", _svg(), 400, "invalid_image"),
        ("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", 400, "invalid_image"),
        ("ico_unsupported_format", _save(pic, "ICO"), 400, "invalid_image"),
        ("heic_like", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64), 400, "invalid_image"),
        ("random_bytes", np.random.default_rng(3).bytes(4096), 400, "invalid_image"),
    ]
    cases = [Case(name, _file(data), status, code, headers={"content-type": MULTIPART}, why="bad image")
             for name, data, status, code in bad]
    odd = [  # valid but unusual: served (the first frame or page where there are several)
        ("png_32x32_minimum", _save(Image.new("RGB", (32, 32), (9, 9, 9)), "PNG"), (32, 32)),
        ("png_16bit_grey", _png16(False), (96, 64)),
        ("png_16bit_rgb", _png16(True), (96, 64)),
        ("jpeg_cmyk", _save(pic.convert("CMYK"), "JPEG", quality=85), (160, 120)),
        ("png_palette", _save(pic.convert("P"), "PNG"), (160, 120)),
        ("png_palette_transparent", _save(pic.convert("P"), "PNG", transparency=0), (160, 120)),
        ("png_rgba", _save(pic.convert("RGBA"), "PNG"), (160, 120)),
        ("png_grey", _save(pic.convert("L"), "PNG"), (160, 120)),
        ("gif_animated_first_frame", _animated_gif(), (160, 120)),
        ("tiff_multipage_first_page", _multipage_tiff(), (160, 120)),
        ("webp", _save(pic, "WEBP", quality=80), (160, 120)),
        ("bmp", _save(pic, "BMP"), (160, 120)),
        ("jpeg_progressive", _save(pic, "JPEG", quality=80, progressive=True), (160, 120)),
        ("jpeg_exif_rotated", _exif_rotated(), (120, 160)),
        ("jpeg_no_part_content_type", good, (160, 120)),
    ]
    for name, data, dims in odd:
        ctype = None if name == "jpeg_no_part_content_type" else "application/octet-stream"
        cases.append(Case(name, _file(data, "x.bin", ctype), 200, None, dimensions=dims,
                          headers={"content-type": MULTIPART}, why="valid but unusual image: served"))
    cases.append(Case("annotate_truncated_jpeg", _file(jpeg[:-200]), 400, "invalid_image",
                      path="/v1/annotate", headers={"content-type": MULTIPART},
                      why="bad image on annotate"))
    return cases


def _json_cases(good: bytes) -> list[Case]:
    rows: list[tuple[str, bytes, int, str]] = [
        ("json_empty_body", b"", 422, "validation_error"),
        ("json_wrong_base64", _json({"image": "%%% not base64 %%%"}), 400, "invalid_image"),
        ("json_base64_of_garbage", _json({"image": _b64(b"garbage" * 50)}), 400, "invalid_image"),
        ("json_base64_truncated_png", _json({"image": _b64(_save(_picture(), "PNG")[:500])}), 400,
         "invalid_image"),
        ("json_base64_data_url", _json({"image": "data:image/jpeg;base64," + _b64(good)}), 400,
         "invalid_image"),
        ("json_image_wrong_type", _json({"image": 12345}), 422, "validation_error"),
        ("json_image_null", _json({"image": None}), 422, "validation_error"),
        ("json_missing_image", _json({"image_name": "x.jpg", "conf": 0.5}), 422, "validation_error"),
        ("json_unknown_field", _json({"image": _b64(good), "colour": "red"}), 422, "validation_error"),
        ("json_conf_string", _json({"image": _b64(good), "conf": "high"}), 422, "validation_error"),
        ("json_conf_nan_literal", b'{"image": "' + _b64(good).encode() + b'", "conf": NaN}', 422,
         "validation_error"),
        ("json_conf_huge_exponent", b'{"image": "' + _b64(good).encode() + b'", "conf": 1e400}', 422,
         "validation_error"),
        ("json_max_det_negative", _json({"image": _b64(good), "max_det": -5}), 422, "validation_error"),
        ("json_image_name_too_long", _json({"image": _b64(good), "image_name": "n" * 600}), 422,
         "validation_error"),
        ("json_top_level_array", _json([_b64(good)]), 422, "validation_error"),
        ("json_deeply_nested", b"[" * 100_000 + b"]" * 100_000, 422, "validation_error"),
        ("json_not_utf8", b'{"image": "\xff\xfe\xfd"}', 422, "validation_error"),
    ]
    return [Case(n, b, s, c, headers={"content-type": JSON}, why="json body") for n, b, s, c in rows]


def _shape_cases(good: bytes) -> list[Case]:
    img: Part = ("image", "a.jpg", "image/jpeg", good)
    many = [(f"f{i}", None, None, b"1") for i in range(1000)]
    batch65 = [("images", f"{i}.jpg", "image/jpeg", good) for i in range(65)]
    plain: dict[str, str] = {}
    rows: list[tuple[str, bytes, int, str | None, str, dict[str, str] | None]] = [
        ("empty_body_no_content_type", b"", 415, "unsupported_media_type", "/v1/detect", plain),
        ("text_plain_body", b"hello", 415, "unsupported_media_type", "/v1/detect",
         {"content-type": "text/plain"}),
        ("xml_body_on_batch", b"<images/>", 415, "unsupported_media_type", "/v1/detect/batch",
         {"content-type": "application/xml"}),
        ("json_on_batch", _json({"images": [_b64(good)]}), 415, "unsupported_media_type",
         "/v1/detect/batch", {"content-type": JSON}),
        ("multipart_empty_body", b"", 422, "validation_error", "/v1/detect", None),
        ("multipart_without_boundary", _file(good), 422, "validation_error", "/v1/detect",
         {"content-type": "multipart/form-data"}),
        ("multipart_garbage", np.random.default_rng(4).bytes(2048), 422, "validation_error",
         "/v1/detect", None),
        ("multipart_unterminated", multipart(img, close=False)[:-40], 422, "validation_error",
         "/v1/detect", None),
        ("huge_field_name", multipart(("n" * 200_000, None, None, b"1"), img), 422, "validation_error",
         "/v1/detect", None),
        ("huge_filename", multipart(("image", "f" * 200_000 + ".jpg", "image/jpeg", good)), 422,
         "validation_error", "/v1/detect", None),
        ("many_parts", multipart(*many, img), 422, "validation_error", "/v1/detect", None),
        ("two_images_on_detect", multipart(img, img), 422, "validation_error", "/v1/detect", None),
        ("part_without_filename", multipart(("image", None, None, good)), 422, "validation_error",
         "/v1/detect", None),
        ("wrong_field_name", _file(good, field_name="picture"), 422, "validation_error",
         "/v1/detect", None),
        ("repeated_parameter", multipart(img, ("conf", None, None, b"0.3"), ("conf", None, None, b"0.4")),
         422, "validation_error", "/v1/detect", None),
        ("parameter_sent_as_file", multipart(img, ("conf", "c.txt", "text/plain", b"0.3")), 422,
         "validation_error", "/v1/detect", None),
        ("batch_65_images", multipart(*batch65), 422, "validation_error", "/v1/detect/batch", None),
        ("batch_no_images", multipart(("conf", None, None, b"0.3")), 422, "validation_error",
         "/v1/detect/batch", None),
    ]
    cases = []
    for name, body, status, code, path, headers in rows:
        cases.append(Case(name, body, status, code, path=path,
                          headers={"content-type": MULTIPART} if headers is None else headers,
                          why="request shape"))
    cases.append(Case("body_over_10mib", b"\0" * (MAX_BODY + 4096), 413, "payload_too_large",
                      headers={"content-type": MULTIPART, "expect": "100-continue"},
                      why="refused from Content-Length before the body is sent"))
    cases.append(Case("header_over_limit", _file(good), 431, "headers_too_large",
                      headers={"content-type": MULTIPART, "x-padding": "p" * 40_000},
                      why="request head over max_header_bytes (16 KiB)"))
    cases.append(Case("get_on_detect", b"", 405, "method_not_allowed", method="GET",
                      why="wrong method"))
    return cases


def _param_cases(good: bytes) -> list[Case]:
    form = [
        ("conf_negative_query", "?conf=-0.5", None, None),
        ("conf_nan_query", "?conf=nan", None, None),
        ("conf_inf_form", "", ("conf", "inf"), None),
        ("conf_nan_form", "", ("conf", "NaN"), None),
        ("iou_negative_form", "", ("iou", "-1"), None),
        ("iou_over_one_query", "?iou=1.0001", None, None),
        ("max_det_negative_query", "?max_det=-3", None, None),
        ("max_det_float_form", "", ("max_det", "1.5"), None),
        ("max_det_huge_query", "?max_det=" + "9" * 40, None, None),
        ("classes_negative_id", "?classes=-1", None, None),
        ("classes_unknown_name", "", ("classes", "unicorn,dragon"), None),
        ("timeout_negative_header", "", None, "-5"),
        ("timeout_nan_header", "", None, "NaN"),
        ("timeout_text_header", "", None, "soon"),
    ]
    cases = []
    for name, query, field_value, timeout in form:
        extra: list[Part] = [] if field_value is None else [
            (field_value[0], None, None, field_value[1].encode())]
        headers = {"content-type": MULTIPART}
        if timeout is not None:
            headers["x-request-timeout-ms"] = timeout
        cases.append(Case(name, _file(good, "a.jpg", "image/jpeg", *extra), 422, "validation_error",
                          path="/v1/detect" + query, headers=headers, why="bad parameter"))
    return cases


def build_cases() -> list[Case]:
    good = _save(_picture(), "JPEG", quality=85)
    builders: list[Callable[[bytes], list[Case]]] = [_image_cases, _json_cases, _shape_cases,
                                                     _param_cases]
    cases = [case for build in builders for case in build(good)]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def write_corpus(out: Path = DEFAULT_OUT) -> list[dict[str, object]]:
    """Write every case's body and ``manifest.json`` into ``out``; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i, case in enumerate(build_cases()):
        filename = f"{i:02d}-{case.name}.body"
        (out / filename).write_bytes(case.body)
        entry = {k: v for k, v in asdict(case).items() if k != "body"}
        entry["body_file"] = filename
        manifest.append(entry)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    manifest = write_corpus(args.out)
    print(f"wrote {len(manifest)} cases to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
