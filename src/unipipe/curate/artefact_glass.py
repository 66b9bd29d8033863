"""Glass inside the tissue outline: bubbles, tears and filled holes that are bright and grey."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from unipipe.curate.tissue_morph import remove_small_objects, um2_to_px
from unipipe.curate.tissue_views import ImageViews, as_views
from unipipe.errors import ConfigError

__all__ = ["GlassParams", "detect_glass"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlassParams:
    """Thresholds of the glass / background detector (config ``curate.artefacts.glass``).

    Attributes:
        min_value: HSV value (0-255) from which a pixel is bright enough to be glass.
        max_saturation: HSV saturation (0-255) up to which a pixel is grey enough.
        min_area_um2: bright patches smaller than this are lumina or fat cells, not
            glass (µm²). Large fat lobules can still be flagged.
    """

    min_value: int = 215
    max_saturation: int = 25
    min_area_um2: float = 1500.0

    def __post_init__(self) -> None:
        for name in ("min_value", "max_saturation"):
            if not 0 <= getattr(self, name) <= 255:
                raise ConfigError(f"curate.artefacts.glass.{name} must be in 0..255")
        if self.min_area_um2 < 0:
            raise ConfigError("curate.artefacts.glass.min_area_um2 must be >= 0")


def detect_glass(
    image: np.ndarray | ImageViews, tissue: np.ndarray, *, mpp: float, params: GlassParams
) -> np.ndarray:
    """Bright unstained regions inside ``tissue``: (h, w) bool on the grid of ``image``."""
    hsv = as_views(image).hsv
    bright = cv2.inRange(hsv, (0, 0, params.min_value), (179, params.max_saturation, 255))
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    return remove_small_objects(bright & tissue, um2_to_px(params.min_area_um2, mpp))
