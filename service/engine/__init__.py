"""The inference engine, usable without HTTP: decode, letterbox, forward pass, batched NMS."""

from service.engine.decode import ImageLimits, decode_image, probe_image
from service.engine.engine import BatchOutput, Engine, choose_backend, weights_version
from service.engine.errors import (
    EngineError,
    ImageDimensionsError,
    ImageError,
    ImageTooLarge,
    InferenceError,
    InvalidImage,
    ModelLoadError,
)
from service.engine.types import Detection, Detections, DetectParams, Letterbox, ModelMeta, Prepared

__all__ = [
    "BatchOutput",
    "DetectParams",
    "Detection",
    "Detections",
    "Engine",
    "EngineError",
    "ImageDimensionsError",
    "ImageError",
    "ImageLimits",
    "ImageTooLarge",
    "InferenceError",
    "InvalidImage",
    "Letterbox",
    "ModelLoadError",
    "ModelMeta",
    "Prepared",
    "choose_backend",
    "decode_image",
    "probe_image",
    "weights_version",
]
