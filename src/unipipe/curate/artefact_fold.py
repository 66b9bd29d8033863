"""Tissue folds and dark debris: regions that stay dark after smoothing over ~20 µm."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from unipipe.curate.tissue_morph import odd_kernel_px, remove_small_objects, um2_to_px
from unipipe.curate.tissue_views import ImageViews, as_views
from unipipe.errors import ConfigError

__all__ = ["FoldParams", "detect_fold"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FoldParams:
    """Thresholds of the fold / dark-debris detector (config ``curate.artefacts.fold``).

    Attributes:
        max_value: HSV value (0-255) at or below which the smoothed image is a fold;
            single nuclei are smoothed away, a double layer of tissue is not.
        smooth_um: side of the box filter applied to the value channel (µm).
        min_area_um2: dark regions smaller than this are ignored (µm²).
    """

    max_value: int = 100
    smooth_um: float = 20.0
    min_area_um2: float = 2000.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_value <= 255:
            raise ConfigError("curate.artefacts.fold.max_value must be in 0..255")
        for name in ("smooth_um", "min_area_um2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"curate.artefacts.fold.{name} must be >= 0")


def detect_fold(
    image: np.ndarray | ImageViews, tissue: np.ndarray, *, mpp: float, params: FoldParams
) -> np.ndarray:
    """Folds and dark debris inside ``tissue``: (h, w) bool on the grid of ``image`` at ``mpp``."""
    value = np.ascontiguousarray(as_views(image).hsv[..., 2])
    size = odd_kernel_px(params.smooth_um, mpp, minimum=1)
    smooth = cv2.blur(value, (size, size)) if size > 1 else value
    dark = (smooth <= params.max_value) & tissue
    return remove_small_objects(dark, um2_to_px(params.min_area_um2, mpp))
