"""The detection parameters, their bounds and defaults: one definition for the service's
validation, its OpenAPI schema and the client's checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pydantic import Field

__all__ = ["CONF", "IOU", "MAX_DET", "PARAMS", "Bound"]


@dataclass(frozen=True)
class Bound:
    """One numeric parameter: its range (inclusive) and default."""

    name: str
    minimum: float
    maximum: float
    default: float
    integer: bool
    description: str

    def field(self) -> Any:
        """The pydantic ``Field`` that enforces the bound (default included)."""
        extra: dict[str, Any] = {} if self.integer else {"allow_inf_nan": False}
        return Field(self.cast(self.default), ge=self.cast(self.minimum), le=self.cast(self.maximum),
                     description=self.description, **extra)

    def cast(self, value: float) -> float | int:
        return int(value) if self.integer else float(value)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "integer" if self.integer else "number",
                "minimum": self.cast(self.minimum), "maximum": self.cast(self.maximum),
                "default": self.cast(self.default), "description": self.description}


CONF: Final = Bound("conf", 0.0, 1.0, 0.25, False, "Confidence threshold")
IOU: Final = Bound("iou", 0.0, 1.0, 0.7, False, "NMS IoU threshold")
MAX_DET: Final = Bound("max_det", 1, 1000, 300, True, "Most boxes kept per image")
PARAMS: Final = (CONF, IOU, MAX_DET)
