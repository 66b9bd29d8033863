"""One thumbnail with its colour conversions computed once and shared by every detector."""

from __future__ import annotations

import functools

import cv2
import numpy as np

__all__ = ["ImageViews", "as_views"]


class ImageViews:
    """An RGB image with lazily cached HSV and grey versions (each costs a full pass).

    Args:
        rgb: (h, w, 3) uint8 RGB pixels; not copied, so do not modify it afterwards.
    """

    def __init__(self, rgb: np.ndarray) -> None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected (h, w, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        self.rgb = rgb

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the image."""
        return self.rgb.shape[:2]

    @functools.cached_property
    def hsv(self) -> np.ndarray:
        """(h, w, 3) uint8 OpenCV HSV (hue 0-179)."""
        return cv2.cvtColor(self.rgb, cv2.COLOR_RGB2HSV)

    @functools.cached_property
    def grey(self) -> np.ndarray:
        """(h, w) uint8 luma."""
        return cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)


def as_views(image: np.ndarray | ImageViews) -> ImageViews:
    """``image`` itself if it already is an `ImageViews`, else a new one around the array."""
    return image if isinstance(image, ImageViews) else ImageViews(image)
