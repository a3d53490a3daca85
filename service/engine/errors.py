"""Errors of the inference engine, mapped to HTTP answers by the service in one place.

    EngineError                     base; never shown to clients as-is
    ├── ImageError                  the caller's image is at fault (4xx)
    │   ├── InvalidImage            not an image, corrupt, truncated, unsupported pixel format
    │   ├── ImageDimensionsError    a side outside the allowed range
    │   └── ImageTooLarge           more pixels than allowed (decompression-bomb guard)
    ├── ModelLoadError              the weights could not be loaded (startup)
    └── InferenceError              the forward pass or post-processing failed (5xx)
"""

from __future__ import annotations

__all__ = [
    "EngineError",
    "ImageDimensionsError",
    "ImageError",
    "ImageTooLarge",
    "InferenceError",
    "InvalidImage",
    "ModelLoadError",
]


class EngineError(Exception):
    """Base of every engine error. ``code`` is the contract's snake_case error code."""

    code = "internal_error"


class ImageError(EngineError):
    """The image sent by the caller cannot be served."""

    code = "invalid_image"


class InvalidImage(ImageError):
    code = "invalid_image"


class ImageDimensionsError(ImageError):
    code = "image_dimensions"


class ImageTooLarge(ImageError):
    code = "payload_too_large"


class ModelLoadError(EngineError):
    code = "model_load_error"


class InferenceError(EngineError):
    code = "inference_error"
