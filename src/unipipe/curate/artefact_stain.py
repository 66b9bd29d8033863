"""Staining: over/under-stained tissue blocks by optical density, and the slide's stain type."""

from __future__ import annotations

import dataclasses
from typing import Literal

import cv2
import numpy as np

from unipipe.curate.tissue_views import ImageViews, as_views
from unipipe.errors import ConfigError

__all__ = [
    "StainParams",
    "StainType",
    "block_optical_density",
    "detect_overstain",
    "detect_understain",
    "estimate_stain_type",
    "hed_optical_density",
    "optical_density",
]

# Optical density of one unit of haematoxylin, eosin and DAB in (R, G, B): the stain
# vectors of Ruifrok and Johnston (Anal Quant Cytol Histol 2001), each scaled to length 1.
_STAIN_OD = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAIN_OD /= np.linalg.norm(_STAIN_OD, axis=1, keepdims=True)
_HED_FROM_OD = np.linalg.inv(_STAIN_OD).astype(np.float32)  # od (n, 3) @ this -> (n, 3) H, E, D
_OD_OF_LEVEL = (-np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)

# Pixels judged at a time by `estimate_stain_type` (about 24 MB of float densities).
_STAIN_BAND_PX = 1 << 20

StainLabel = Literal["he", "ihc", "not_he", "unknown"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StainParams:
    """Thresholds of the staining detectors (config ``curate.artefacts.stain``).

    A block's optical density (OD) is that of its mean tissue colour, averaged over R, G
    and B. On the bundled H&E and IHC slides block ODs lie between 0.1 and 0.4.

    The stain type is judged per clean-tissue pixel of the thumbnail after colour
    deconvolution into haematoxylin, eosin and DAB (see `estimate_stain_type`). On the
    bundled slides at 4 µm/px: the DAB fraction is 0.13 on the Ki67 IHC slide and at most
    0.04 on the H&E slides; the eosin fraction is 0.0 on the IHC slide and 0.87-0.97 on
    the H&E slides.

    Attributes:
        block_um: side of the square blocks the statistics are taken over (µm).
        max_block_od: blocks with an OD above this are overstained.
        min_block_od: blocks with an OD below this are understained (washed out).
        min_block_tissue: blocks less covered by usable tissue than this are not judged.
        dab_min_od: a pixel whose DAB OD exceeds this while its eosin OD is at most 0 is
            DAB-stained.
        max_dab_fraction: a slide whose DAB-stained share of tissue exceeds this looks
            like IHC.
        min_eosin_fraction: a slide whose share of tissue with eosin OD above 0 is below
            this looks unlike H&E (no eosin counterstain); 0 turns this rule off.
    """

    block_um: float = 200.0
    max_block_od: float = 0.6
    min_block_od: float = 0.06
    min_block_tissue: float = 0.5
    dab_min_od: float = 0.15
    max_dab_fraction: float = 0.08
    min_eosin_fraction: float = 0.5

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
        if not self.dab_min_od > 0:
            raise ConfigError(
                f"curate.artefacts.stain.dab_min_od must be > 0, got {self.dab_min_od!r}"
            )
        for key in ("max_dab_fraction", "min_eosin_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(
                    f"curate.artefacts.stain.{key} must be a fraction in [0, 1], "
                    f"got {getattr(self, key)!r}"
                )


@dataclasses.dataclass(frozen=True)
class StainType:
    """What the stain of a slide looks like (the ``stain`` record of qc.json).

    Attributes:
        label: "he"; "ihc" (too much DAB); "not_he" (too little eosin, no DAB excess);
            "unknown" (no clean tissue to judge).
        dab_fraction: share of the judged tissue pixels that are DAB-stained.
        eosin_fraction: share of the judged tissue pixels with eosin OD above 0.
        reason: the verdict reason in words, None for "he" and "unknown".
    """

    label: StainLabel
    dab_fraction: float
    eosin_fraction: float
    reason: str | None


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density -log10((I + 1) / 256) averaged over the last axis (R, G, B): float32."""
    intensity = np.asarray(rgb, np.float32)
    return (-np.log10((intensity + 1.0) / 256.0)).mean(axis=-1, dtype=np.float32)


def hed_optical_density(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and DAB optical densities of RGB pixels: (..., 3) float32.

    Colour deconvolution with fixed Ruifrok-Johnston stain vectors; a stain absent from
    a pixel comes out near 0, and slightly negative where the scanner's colours differ
    from the reference vectors (pure haematoxylin gives eosin OD about -0.05).
    """
    od = _OD_OF_LEVEL[np.asarray(rgb, np.uint8)]
    return od @ _HED_FROM_OD


def estimate_stain_type(
    image: np.ndarray | ImageViews, tissue: np.ndarray, *, params: StainParams
) -> StainType:
    """Whether the tissue looks like H&E, from its DAB and eosin shares.

    IHC shows brown DAB on a haematoxylin counterstain and no eosin; H&E has eosin almost
    everywhere. Pixels are judged separately, so a few pigment-brown spots in H&E stay
    below ``max_dab_fraction``.

    Args:
        image: (h, w, 3) uint8 RGB thumbnail or its `ImageViews`.
        tissue: (h, w) bool mask of the pixels to judge (clean tissue: ink left out).
        params: the thresholds.
    """
    rgb = as_views(image).rgb
    # Bands of rows: the float stain densities take 24 bytes per judged pixel, which for a
    # whole thumbnail at once was the largest array of the stage. Counts are exact, and
    # each pixel's densities do not depend on the band it is computed in.
    rows = max(1, _STAIN_BAND_PX // max(1, rgb.shape[1]))
    n = n_dab = n_eosin = 0
    for top in range(0, rgb.shape[0], rows):
        pixels = rgb[top : top + rows][tissue[top : top + rows]]  # (m, 3) uint8
        hed = hed_optical_density(pixels)  # (m, 3): H, E, D
        n += len(pixels)
        n_dab += int(np.count_nonzero((hed[:, 2] > params.dab_min_od) & (hed[:, 1] <= 0.0)))
        n_eosin += int(np.count_nonzero(hed[:, 1] > 0.0))
    if not n:
        return StainType("unknown", 0.0, 0.0, None)
    dab, eosin = n_dab / n, n_eosin / n
    if dab > params.max_dab_fraction:
        reason = f"stain looks like IHC (DAB fraction {dab:.2f} > {params.max_dab_fraction:g})"
        return StainType("ihc", dab, eosin, reason)
    if eosin < params.min_eosin_fraction:
        reason = (
            f"stain looks unlike H&E (eosin fraction {eosin:.2f} < {params.min_eosin_fraction:g})"
        )
        return StainType("not_he", dab, eosin, reason)
    return StainType("he", dab, eosin, None)


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
    # Tissue weight (255) and tissue colour, zero elsewhere, written straight into arrays
    # padded to whole blocks: one copy of the thumbnail instead of three.
    weight = np.zeros((rows * block, cols * block), np.uint8)
    np.multiply(tissue, np.uint8(255), out=weight[:h, :w])
    colour = np.zeros((rows * block, cols * block, 3), np.uint8)
    np.copyto(colour[:h, :w], rgb, where=tissue[..., None])
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
