"""Over- and under-staining: blocks of tissue whose mean optical density is out of range."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from unipipe.curate.tissue_views import ImageViews, as_views
from unipipe.errors import ConfigError

__all__ = [
    "StainParams",
    "block_optical_density",
    "detect_overstain",
    "detect_understain",
    "optical_density",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StainParams:
    """Thresholds of the staining detectors (config ``curate.artefacts.stain``).

    A block's optical density (OD) is that of its mean tissue colour, averaged over R, G
    and B. On the bundled H&E and IHC slides block ODs lie between 0.1 and 0.4.

    Attributes:
        block_um: side of the square blocks the statistics are taken over (µm).
        max_block_od: blocks with an OD above this are overstained.
        min_block_od: blocks with an OD below this are understained (washed out).
        min_block_tissue: blocks less covered by usable tissue than this are not judged.
    """

    block_um: float = 200.0
    max_block_od: float = 0.6
    min_block_od: float = 0.06
    min_block_tissue: float = 0.5

    def __post_init__(self) -> None:
        if not self.block_um > 0:
            raise ConfigError("curate.artefacts.stain.block_um must be > 0")
        if not 0 <= self.min_block_od < self.max_block_od:
            raise ConfigError(
                "curate.artefacts.stain needs 0 <= min_block_od < max_block_od, got "
                f"{self.min_block_od!r} and {self.max_block_od!r}"
            )
        if not 0 < self.min_block_tissue <= 1:
            raise ConfigError("curate.artefacts.stain.min_block_tissue must be in (0, 1]")


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density -log10((I + 1) / 256) averaged over the last axis (R, G, B): float32."""
    intensity = np.asarray(rgb, np.float32)
    return (-np.log10((intensity + 1.0) / 256.0)).mean(axis=-1, dtype=np.float32)


def block_optical_density(
    image: np.ndarray | ImageViews, tissue: np.ndarray, *, mpp: float, params: StainParams
) -> tuple[np.ndarray, int]:
    """OD of the mean tissue colour of each block (NaN where too little tissue).

    Block sums come from OpenCV's integer-factor area averaging on 8-bit images (fast;
    the means are rounded to whole grey levels, well below the thresholds' precision).

    Returns:
        (rows, cols) float32 block ODs and the block side in pixels.
    """
    rgb = as_views(image).rgb
    h, w = tissue.shape
    block = max(1, round(params.block_um / mpp))
    rows, cols = -(-h // block), -(-w // block)
    pad = (0, rows * block - h, 0, cols * block - w)
    weight = cv2.copyMakeBorder(tissue.astype(np.uint8) * 255, *pad, cv2.BORDER_CONSTANT, value=0)
    colour = cv2.copyMakeBorder(
        cv2.bitwise_and(rgb, rgb, mask=weight[:h, :w]), *pad, cv2.BORDER_CONSTANT, value=0
    )
    mean_weight = cv2.resize(weight, (cols, rows), interpolation=cv2.INTER_AREA)
    mean_colour = cv2.resize(colour, (cols, rows), interpolation=cv2.INTER_AREA)
    mean_weight = mean_weight.reshape(rows, cols).astype(np.float32) / 255.0
    mean_colour = mean_colour.reshape(rows, cols, 3).astype(np.float32)
    judged = mean_weight >= params.min_block_tissue
    block_colour = mean_colour / np.maximum(mean_weight, 1e-6)[..., None]
    return np.where(judged, optical_density(block_colour), np.nan).astype(np.float32), block


def _flag_blocks(flags: np.ndarray, block: int, tissue: np.ndarray) -> np.ndarray:
    h, w = tissue.shape
    full = np.repeat(np.repeat(flags, block, axis=0), block, axis=1)[:h, :w]
    return full & tissue


def detect_overstain(
    image: np.ndarray | ImageViews, tissue: np.ndarray, *, mpp: float, params: StainParams
) -> np.ndarray:
    """Tissue in blocks whose OD exceeds ``max_block_od``: (h, w) bool."""
    block_od, block = block_optical_density(image, tissue, mpp=mpp, params=params)
    return _flag_blocks(np.nan_to_num(block_od, nan=0.0) > params.max_block_od, block, tissue)


def detect_understain(
    image: np.ndarray | ImageViews, tissue: np.ndarray, *, mpp: float, params: StainParams
) -> np.ndarray:
    """Tissue in blocks whose OD is below ``min_block_od``: (h, w) bool."""
    block_od, block = block_optical_density(image, tissue, mpp=mpp, params=params)
    return _flag_blocks(np.nan_to_num(block_od, nan=np.inf) < params.min_block_od, block, tissue)
