"""Tissue segmentation on a coarse thumbnail: saturation threshold, morphology, polygons."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Literal

import cv2
import numpy as np

from unipipe.curate.artefact_pen import PenParams, detect_pen
from unipipe.curate.tissue_geojson import pieces_to_polygons, polygons_to_geojson, write_geojson
from unipipe.curate.tissue_io import PREVIEW_MAX_PX, fit_preview, write_jpeg, write_png
from unipipe.curate.tissue_morph import filter_components, odd_kernel_px, square, um2_to_px
from unipipe.curate.tissue_views import ImageViews
from unipipe.errors import ConfigError
from unipipe.provenance import write_sidecar
from unipipe.slide import open_slide

__all__ = [
    "TissueParams",
    "TissueResult",
    "draw_outline",
    "texture",
    "run_segment_tissue",
    "segment_tissue",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TissueParams:
    """Parameters of classical tissue segmentation (config section ``curate.tissue``).

    Lengths are µm and areas µm², converted to pixels at ``thumb_mpp``, so the same
    values work on small demo slides and on full-size WSIs.

    Attributes:
        thumb_mpp: µm/px of the thumbnail the mask is computed on (and of tissue.png).
        threshold_method: "fixed" uses ``saturation_threshold``; "otsu" uses Otsu's
            threshold clipped to [saturation_threshold, otsu_max_threshold].
        saturation_threshold: HSV saturation (0-255) above which a pixel is tissue.
        otsu_max_threshold: upper clip of the Otsu threshold.
        median_um: median-blur window on the saturation channel (µm).
        closing_um: side of the square used to close gaps (µm).
        min_tissue_area_um2: tissue pieces smaller than this are removed (µm²).
        min_hole_area_um2: holes smaller than this are filled (µm²); larger ones stay holes.
        exclude_pen: ink (default `PenParams` colour rules) is no evidence of tissue, so
            ink on glass is dropped; ink lying on tissue stays tissue so that the
            artefact stage flags it.
        min_texture: grey-level range (max - min in 3 x 3 px at thumb_mpp) from which a
            saturated pixel counts as evidence of tissue; smooth ink fringes and stain
            smears stay below it.
        min_evidence_fraction: a piece is kept only if at least this fraction of its area
            is evidence of tissue.
        simplify_um: Douglas-Peucker tolerance of the GeoJSON polygons (µm).
    """

    thumb_mpp: float = 4.0
    threshold_method: Literal["fixed", "otsu"] = "fixed"
    saturation_threshold: int = 20
    otsu_max_threshold: int = 60
    median_um: float = 16.0
    closing_um: float = 32.0
    min_tissue_area_um2: float = 20000.0
    min_hole_area_um2: float = 8000.0
    exclude_pen: bool = True
    min_texture: int = 8
    min_evidence_fraction: float = 0.1
    simplify_um: float = 4.0

    def __post_init__(self) -> None:
        if not self.thumb_mpp > 0:
            raise ConfigError(f"curate.tissue.thumb_mpp must be > 0 µm/px, got {self.thumb_mpp!r}")
        if self.threshold_method not in ("fixed", "otsu"):
            raise ConfigError(
                "curate.tissue.threshold_method must be 'fixed' or 'otsu', "
                f"got {self.threshold_method!r}"
            )
        for name in ("saturation_threshold", "otsu_max_threshold"):
            if not 0 <= getattr(self, name) <= 255:
                raise ConfigError(f"curate.tissue.{name} must be in 0..255")
        if self.otsu_max_threshold < self.saturation_threshold:
            raise ConfigError("curate.tissue.otsu_max_threshold must be >= saturation_threshold")
        for name in (
            "median_um",
            "closing_um",
            "min_tissue_area_um2",
            "min_hole_area_um2",
            "simplify_um",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"curate.tissue.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.min_texture <= 255:
            raise ConfigError("curate.tissue.min_texture must be in 0..255")
        if not 0 <= self.min_evidence_fraction <= 1:
            raise ConfigError("curate.tissue.min_evidence_fraction must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class TissueResult:
    """Output of `segment_tissue` on one thumbnail.

    Attributes:
        mask: (h, w) uint8, 255 = tissue, on the thumbnail grid.
        polygons: [outer ring, hole rings...] per piece, (n, 2) (x, y) in thumbnail pixels.
        threshold: the saturation threshold used (0-255).
    """

    mask: np.ndarray
    polygons: list[list[np.ndarray]]
    threshold: int

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the thumbnail that is tissue."""
        return float((self.mask > 0).mean()) if self.mask.size else 0.0


def segment_tissue(rgb: np.ndarray, *, mpp: float, params: TissueParams) -> TissueResult:
    """Segment tissue in an RGB image (usually a slide thumbnail) at ``mpp`` µm/px.

    Steps: HSV saturation, median blur, threshold, closing; pieces with too little
    evidence of tissue (textured, saturated, not ink) dropped; small pieces removed,
    small holes filled, outlines traced.
    """
    # Full-size working arrays are dropped as soon as they are used: the stage's memory is
    # a few bytes per thumbnail pixel, so that it stays within the rule's mem_mb.
    # HSV is needed for its saturation only (ink is found on a smaller copy): not cached.
    saturation = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1])
    saturation = cv2.medianBlur(saturation, odd_kernel_px(params.median_um, mpp, minimum=3))
    threshold = _threshold(saturation, params)
    saturated = cv2.threshold(saturation, threshold, 255, cv2.THRESH_BINARY)[1]
    del saturation
    tissue = cv2.morphologyEx(saturated, cv2.MORPH_CLOSE, square(params.closing_um, mpp)) > 0

    # Evidence of tissue: saturated and textured (and, below, not ink).
    views = ImageViews(rgb)
    evidence = texture(views.grey) >= params.min_texture
    evidence &= saturated > 0
    del saturated
    if params.exclude_pen:
        evidence &= ~detect_pen(views, mpp=mpp, params=PenParams())
    del views
    tissue, pieces = filter_components(
        tissue,
        min_area_px=um2_to_px(params.min_tissue_area_um2, mpp),
        min_hole_px=um2_to_px(params.min_hole_area_um2, mpp),
        evidence=evidence,
        min_evidence_fraction=params.min_evidence_fraction,
    )

    mask = np.multiply(tissue, np.uint8(255))  # 0/255 uint8 without an int copy
    polygons = pieces_to_polygons(pieces, simplify_px=params.simplify_um / mpp)
    return TissueResult(mask=mask, polygons=polygons, threshold=threshold)


def _threshold(saturation: np.ndarray, params: TissueParams) -> int:
    if params.threshold_method == "fixed":
        return params.saturation_threshold
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return int(np.clip(otsu, params.saturation_threshold, params.otsu_max_threshold))


def texture(grey: np.ndarray) -> np.ndarray:
    """Grey-level range (max - min) over the 3 x 3 neighbourhood of each pixel, uint8."""
    return cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))


def draw_outline(
    rgb: np.ndarray, polygons: list[list[np.ndarray]], *, max_px: int = PREVIEW_MAX_PX
) -> np.ndarray:
    """The image with tissue outlines (green) and holes (blue), downsized to ``max_px``."""
    scale = min(1.0, max_px / max(rgb.shape[:2]))
    preview = np.ascontiguousarray(fit_preview(rgb, max_px))
    thickness = max(1, round(max(preview.shape[:2]) / 400))
    for rings in polygons:
        for index, ring in enumerate(rings):
            points = np.round((ring + 0.5) * scale - 0.5).astype(np.int32).reshape(-1, 1, 2)
            colour = (0, 170, 0) if index == 0 else (0, 90, 255)
            cv2.polylines(preview, [points], True, colour, thickness, cv2.LINE_AA)
    return preview


def run_segment_tissue(
    slide_path: str | os.PathLike[str],
    *,
    slide_id: str,
    mpp: float | None,
    params: TissueParams,
    mask_png: str | os.PathLike[str],
    geojson: str | os.PathLike[str],
    preview_jpg: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
) -> None:
    """Segment one slide's tissue and write mask, polygons, preview and sidecar.

    Args:
        slide_path: the slide file (or DICOM folder).
        slide_id: manifest id.
        mpp: manifest µm/px override (None: from metadata).
        params: segmentation parameters.
        mask_png: uint8 0/255 mask at ``params.thumb_mpp`` covering the whole slide.
        geojson: FeatureCollection of tissue Polygons (with holes) in level-0 pixels.
        preview_jpg: thumbnail with the outlines drawn.
        sidecar: parameters, versions and input checksums.
    """
    logger.info("segment_tissue %s: %s", slide_id, params)
    with open_slide(slide_path, slide_id=slide_id, mpp=mpp) as slide:
        thumbnail = slide.read_thumbnail(params.thumb_mpp)
        level0_per_px = params.thumb_mpp / slide.mpp
        dimensions, slide_mpp = slide.dimensions, slide.mpp
    result = segment_tissue(thumbnail, mpp=params.thumb_mpp, params=params)
    collection = polygons_to_geojson(
        result.polygons, slide_id=slide_id, level0_per_px=level0_per_px, dimensions=dimensions
    )

    write_png(mask_png, result.mask)
    write_geojson(geojson, collection)
    write_jpeg(preview_jpg, draw_outline(thumbnail, result.polygons))
    summary = {
        "slide_id": slide_id,
        "slide_mpp": slide_mpp,
        "dimensions": dimensions,
        "mask_shape": result.mask.shape,
        "threshold": result.threshold,
        "tissue_fraction": round(result.tissue_fraction, 6),
        "tissue_area_mm2": round(float((result.mask > 0).sum()) * params.thumb_mpp**2 / 1e6, 6),
        "n_polygons": len(result.polygons),
    }
    write_sidecar(
        sidecar, stage="segment_tissue", params=params, inputs=[slide_path], extra=summary
    )
    logger.info(
        "segment_tissue %s: %.1f%% tissue, %d polygon(s)",
        slide_id,
        100 * result.tissue_fraction,
        len(result.polygons),
    )
