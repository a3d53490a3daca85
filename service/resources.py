"""Files that ship inside the distribution: the demo model and gunicorn's settings.

The demo model lives at ``models/`` in the checkout; pyproject.toml maps the package
``yoloserve.models`` onto that folder, so a wheel or an editable install carries it as package data
and an installed copy serves it from any directory. A checkout whose environment predates that
mapping (or has no install at all) falls back to ``models/`` beside this package.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from importlib import resources
from pathlib import Path

__all__ = ["MODELS_PACKAGE", "demo_model_path", "gunicorn_config"]

MODELS_PACKAGE = "yoloserve.models"
DEMO_MODEL = "demo.pt"
GUNICORN_CONF_MODULE = "service.gunicorn_conf"

_CHECKOUT_MODELS = Path(__file__).resolve().parent.parent / "models"
_extracted = contextlib.ExitStack()  # files unpacked from a zipped install, kept until exit
atexit.register(_extracted.close)


@functools.cache
def demo_model_path() -> Path:
    """The demo model's weights (``demo.pt``; ``demo.onnx`` lies beside it) on the file system."""
    try:
        resource = resources.files(MODELS_PACKAGE) / DEMO_MODEL
    except ModuleNotFoundError:  # an environment installed before the package was mapped
        resource = None
    if resource is not None and resource.is_file():
        if isinstance(resource, Path):
            return resource.resolve()
        # imported from a zip: torch and ONNX Runtime need a real file, for the whole process
        return Path(_extracted.enter_context(resources.as_file(resource)))
    return _CHECKOUT_MODELS / DEMO_MODEL


def gunicorn_config() -> str:
    """What ``yoloserve serve --workers N`` passes to gunicorn's ``-c``: the packaged settings module.

    The checkout's ``gunicorn.conf.py`` only re-exports this module, for a hand-run ``gunicorn``.
    """
    return f"python:{GUNICORN_CONF_MODULE}"
