"""The ``detect`` command's inputs: files, folders (walked recursively, images only) and globs.

Walked lazily and in a stable (sorted) order, so a folder of a million images is never listed whole.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "count_images", "iter_image_paths", "missing_paths"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jfif", ".pgm", ".ppm"}
)
_GLOB_CHARS = frozenset("*?[")


def _is_glob(spec: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(spec)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def missing_paths(specs: Iterable[str]) -> list[str]:
    """The specs that are neither an existing path nor a glob pattern."""
    return [spec for spec in specs if not _is_glob(spec) and not os.path.exists(spec)]


def iter_image_paths(specs: Iterable[str]) -> Iterator[Path]:
    """Each image named by ``specs``: a file as given, a folder's images, a glob's matches.

    A file named explicitly is taken whatever its extension; in folders and glob matches only image
    extensions count, and hidden files and folders are skipped.
    """
    for spec in specs:
        if os.path.isdir(spec):
            yield from _walk(spec)
        elif os.path.exists(spec):
            yield Path(spec)
        elif _is_glob(spec):
            for match in sorted(glob.iglob(spec, recursive=True)):
                if os.path.isdir(match):
                    yield from _walk(match)
                elif _is_image(os.path.basename(match)):
                    yield Path(match)


def count_images(specs: Iterable[str]) -> int:
    """How many paths :func:`iter_image_paths` yields (an extra walk, for the progress bar)."""
    return sum(1 for _ in iter_image_paths(specs))


def _walk(root: str) -> Iterator[Path]:
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in sorted(filenames):
            if _is_image(name):
                yield Path(folder, name)
