"""Cheap per-patch features for selection: stain statistics in HED space plus grey-level texture."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["FEATURE_NAMES", "HED_FROM_RGB", "RGB_FROM_HED", "patch_features", "rgb2hed"]

# Ruifrok & Johnston (2001) optical-density vectors of haematoxylin, eosin and DAB (rows),
# normalised to unit length; OD(rgb) = concentrations @ RGB_FROM_HED.
_STAIN_OD = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = _STAIN_OD / np.linalg.norm(_STAIN_OD, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

_HED_FROM_RGB_32 = HED_FROM_RGB.astype(np.float32)
_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma

FEATURE_NAMES = (
    "feat_h_mean",
    "feat_h_std",
    "feat_e_mean",
    "feat_e_std",
    "feat_d_mean",
    "feat_od_mean",
    "feat_grey_mean",
    "feat_grey_std",
    "feat_grad_mean",
    "feat_grad_std",
    "feat_lap_mean",
    "feat_dark_fraction",
)


def rgb2hed(rgb: np.ndarray) -> np.ndarray:
    """Stain concentrations (optical-density units, log10) of an RGB uint8 image.

    Args:
        rgb: (h, w, 3) uint8.

    Returns:
        (h, w, 3) float32 with channels haematoxylin, eosin, DAB; 0 for white.
    """
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)  # (h, w, 3) >= 0
    return (od @ _HED_FROM_RGB_32).astype(np.float32)


def patch_features(rgb: np.ndarray) -> np.ndarray:
    """Feature vector of one patch, in the order of ``FEATURE_NAMES``.

    Colour: mean and spread of haematoxylin and eosin, mean DAB and total optical density.
    Texture: grey-level mean and spread, mean and spread of the gradient magnitude, mean
    absolute 4-neighbour Laplacian and the fraction of dark (nuclear) pixels.

    Args:
        rgb: (h, w, 3) uint8 patch at any mpp (texture values depend on it; use one mpp).

    Returns:
        (len(FEATURE_NAMES),) float64.
    """
    # One float copy and one optical density serve colour and texture; each value is what
    # rgb2hed and a separate -log10 pass give, bit for bit (stored features must not move).
    intensity = rgb.astype(np.float32)
    od = -np.log10((intensity + 1.0) / 256.0)  # (h, w, 3)
    hed = (od @ _HED_FROM_RGB_32).astype(np.float32)
    grey = intensity @ _GREY_WEIGHTS / 255.0
    gy, gx = np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1, :]  # (h-1, w-1)
    grad = np.hypot(gx, gy)
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    od_total = od.sum(axis=2)
    return np.array(
        [
            hed[..., 0].mean(),
            hed[..., 0].std(),
            hed[..., 1].mean(),
            hed[..., 1].std(),
            hed[..., 2].mean(),
            od_total.mean(),
            grey.mean(),
            grey.std(),
            grad.mean(),
            grad.std(),
            np.abs(lap).mean(),
            (grey < 0.4).mean(),
        ],
        dtype=np.float64,
    )
