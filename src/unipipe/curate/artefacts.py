"""Artefact detection on the tissue grid: a registry of detectors, a class mask and qc.json."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np

from unipipe.curate.artefact_blur import BlurParams, blur_score, is_blurred
from unipipe.curate.artefact_fold import FoldParams, detect_fold
from unipipe.curate.artefact_glass import GlassParams, detect_glass
from unipipe.curate.artefact_pen import PenParams, detect_pen
from unipipe.curate.artefact_stain import (
    StainParams,
    block_optical_density,
    detect_overstain,
    detect_understain,
    estimate_stain_type,
)
from unipipe.curate.artefact_verdict import VerdictParams, judge
from unipipe.curate.tissue_io import (
    PREVIEW_MAX_PX,
    fit_preview,
    read_mask_png,
    write_jpeg,
    write_png,
)
from unipipe.curate.tissue_views import ImageViews
from unipipe.errors import ConfigError, SlideError
from unipipe.provenance import write_json, write_sidecar
from unipipe.slide import open_slide

__all__ = [
    "ARTEFACT_CLASSES",
    "CLASS_COLOURS",
    "DETECTORS",
    "ArtefactParams",
    "Detector",
    "blur_score",
    "check_class_names",
    "classify",
    "is_blurred",
    "overlay",
    "qc_summary",
    "run_detect_artefacts",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Detector:
    """One registered artefact detector.

    Attributes:
        code: its value in the class mask (>= 2).
        params_field: the `ArtefactParams` field holding its thresholds.
        detect: (image, tissue, *, mpp, params) -> (h, w) bool mask inside tissue, where
            image is an (h, w, 3) uint8 RGB array or its `ImageViews`.
    """

    code: int
    params_field: str
    detect: Callable[..., np.ndarray]


def _detect_pen_in_tissue(
    image: np.ndarray | ImageViews, tissue: np.ndarray, *, mpp: float, params: PenParams
) -> np.ndarray:
    return detect_pen(image, mpp=mpp, params=params) & tissue


# Detectors in priority order: a pixel flagged by several takes the first one's class.
DETECTORS: dict[str, Detector] = {
    "pen": Detector(2, "pen", _detect_pen_in_tissue),
    "fold": Detector(3, "fold", detect_fold),
    "glass": Detector(4, "glass", detect_glass),
    "overstain": Detector(5, "stain", detect_overstain),
    "understain": Detector(6, "stain", detect_understain),
}

# Class name -> code of artefacts.png; 0 = background (not tissue), 1 = clean tissue.
ARTEFACT_CLASSES: dict[str, int] = {
    "background": 0,
    "tissue": 1,
    **{name: d.code for name, d in DETECTORS.items()},
}

# Overlay colours (RGB) of the preview.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "pen": (0, 200, 255),
    "fold": (255, 0, 255),
    "glass": (255, 255, 0),
    "overstain": (128, 0, 0),
    "understain": (255, 160, 0),
}

_GROUPS: dict[str, type] = {
    "pen": PenParams,
    "fold": FoldParams,
    "glass": GlassParams,
    "stain": StainParams,
    "blur": BlurParams,
    "verdict": VerdictParams,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArtefactParams:
    """Parameters of artefact detection (config section ``curate.artefacts``).

    Each detector's thresholds are a sub-section (``pen``, ``fold``, ``glass``, ``stain``);
    ``blur`` holds the per-tile threshold tiling uses; ``verdict`` the slide limits.

    Attributes:
        detectors: which registered detectors run, by name (see `DETECTORS`).
    """

    detectors: tuple[str, ...] = tuple(DETECTORS)
    pen: PenParams = dataclasses.field(default_factory=PenParams)
    fold: FoldParams = dataclasses.field(default_factory=FoldParams)
    glass: GlassParams = dataclasses.field(default_factory=GlassParams)
    stain: StainParams = dataclasses.field(default_factory=StainParams)
    blur: BlurParams = dataclasses.field(default_factory=BlurParams)
    verdict: VerdictParams = dataclasses.field(default_factory=VerdictParams)

    def __post_init__(self) -> None:
        object.__setattr__(self, "detectors", tuple(self.detectors))
        unknown = sorted(set(self.detectors) - set(DETECTORS))
        if unknown:
            raise ConfigError(
                f"curate.artefacts.detectors has unknown name(s) {unknown}; "
                f"registered: {sorted(DETECTORS)}"
            )
        for name, cls in _GROUPS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, _build_group(cls, value, f"curate.artefacts.{name}"))
            elif not isinstance(value, cls):
                raise ConfigError(f"curate.artefacts.{name} must be a mapping, got {value!r}")
        for name in ("class_warn_fraction", "class_fail_fraction"):
            check_class_names(getattr(self.verdict, name), f"curate.artefacts.verdict.{name}")


def check_class_names(limits: Mapping[str, Any], key: str) -> None:
    """Refuse per-class limits keyed by a name that is no registered artefact class.

    A misspelt class (``fodl``) would otherwise be ignored and its limit never applied.

    Args:
        limits: class name -> limit, as read from the config.
        key: the config key holding them, named in the error.
    """
    unknown = sorted(set(limits) - set(DETECTORS))
    if unknown:
        raise ConfigError(
            f"{key} names unknown artefact class(es) {unknown}; the classes are the "
            f"registered detectors {list(DETECTORS)}"
        )


def _build_group(cls: type, section: Mapping[str, Any], key: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(
            f"config key {key!r} has unknown field(s) {unknown}; allowed: {sorted(names)}"
        )
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key {key!r}: {err}") from err


def classify(
    rgb: np.ndarray, tissue: np.ndarray, *, mpp: float, params: ArtefactParams
) -> np.ndarray:
    """Class mask of ``rgb`` (codes of `ARTEFACT_CLASSES`) given its bool ``tissue`` mask.

    Args:
        rgb: (h, w, 3) uint8 thumbnail on the tissue grid.
        tissue: (h, w) bool tissue mask.
        mpp: µm per pixel of the grid.
        params: detector thresholds.

    Returns:
        (h, w) uint8: 0 outside tissue, 1 clean tissue, detector codes elsewhere.
    """
    views = ImageViews(rgb)  # HSV and grey computed once for all detectors
    classes = tissue.astype(np.uint8)  # 0 background, 1 tissue
    free = tissue.copy()  # tissue no higher-priority detector claimed
    for name in params.detectors:
        detector = DETECTORS[name]
        group = getattr(params, detector.params_field)
        hit = detector.detect(views, free, mpp=mpp, params=group) & free
        classes[hit] = detector.code
        free &= ~hit
    return classes


def overlay(rgb: np.ndarray, classes: np.ndarray, *, max_px: int = PREVIEW_MAX_PX) -> np.ndarray:
    """Preview: the thumbnail (downsized to ``max_px``) with artefacts tinted, tissue outlined."""
    preview = np.ascontiguousarray(fit_preview(rgb, max_px))
    h, w = preview.shape[:2]
    if (h, w) != classes.shape:
        classes = cv2.resize(classes, (w, h), interpolation=cv2.INTER_NEAREST)
    tint = preview.copy()
    for name, colour in CLASS_COLOURS.items():
        tint[classes == ARTEFACT_CLASSES[name]] = colour
    preview = cv2.addWeighted(preview, 0.45, tint, 0.55, 0.0)
    contours, _ = cv2.findContours(
        (classes > 0).astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(preview, contours, -1, (0, 170, 0), max(1, round(max(h, w) / 400)))
    return preview


def _grid_mpp(level0: tuple[int, int], slide_mpp: float, grid: tuple[int, int]) -> float | None:
    """The µm/px at which the slide's thumbnail has exactly ``grid`` = (w, h) pixels, if any.

    `Slide.thumbnail_size` rounds level-0 size * slide_mpp / mpp; each axis bounds mpp to
    an interval, and the middle of their intersection reproduces both sizes.
    """
    low, high = 0.0, np.inf
    for size0, size in zip(level0, grid, strict=True):
        extent_um = size0 * slide_mpp
        low = max(low, extent_um / (size + 0.5))
        high = min(high, extent_um / (size - 0.5) if size > 0.5 else np.inf)
    if not low < high:
        return None
    return (low + high) / 2 if np.isfinite(high) else low * 1.01


def _read_grid_thumbnail(slide: Any, shape: tuple[int, int], tissue_png: os.PathLike | str):
    """The slide rendered on the tissue mask's grid, and that grid's µm/px."""
    h, w = shape
    mpp = _grid_mpp(slide.dimensions, slide.mpp, (w, h))
    if mpp is None:
        mpp = slide.dimensions[0] * slide.mpp / w
    thumb = slide.read_thumbnail(mpp)
    if thumb.shape[:2] != (h, w):
        if max(abs(thumb.shape[0] - h), abs(thumb.shape[1] - w)) > 2:
            raise SlideError(
                f"slide {slide.slide_id!r} ('{slide.path}'): tissue mask {tissue_png} is {w}x{h} px, "
                f"which is no thumbnail of this {slide.dimensions[0]}x{slide.dimensions[1]} slide; "
                "rerun segment_tissue for it"
            )
        thumb = cv2.resize(thumb, (w, h), interpolation=cv2.INTER_AREA)
    return thumb, mpp


def qc_summary(
    classes: np.ndarray, rgb: np.ndarray, *, slide_id: str, mpp: float, params: ArtefactParams
) -> dict[str, Any]:
    """The qc.json record: area fractions of tissue per class, stain statistics, verdict."""
    # Counts class by class: np.bincount would first copy the mask to 8-byte integers.
    n_tissue = int(np.count_nonzero(classes))
    counts = {name: int(np.count_nonzero(classes == d.code)) for name, d in DETECTORS.items()}
    fractions = {name: float(counts[name]) / n_tissue if n_tissue else 0.0 for name in DETECTORS}
    tissue_mm2 = n_tissue * mpp * mpp / 1e6
    clean = classes == ARTEFACT_CLASSES["tissue"]
    stain_type = estimate_stain_type(rgb, clean, params=params.stain)  # ink would read as DAB
    verdict, reasons = judge(
        {name: fractions[name] for name in params.detectors},
        tissue_mm2,
        params.verdict,
        stain=stain_type,
    )
    block_od, _ = block_optical_density(rgb, clean, mpp=mpp, params=params.stain)
    block_od = block_od[np.isfinite(block_od)]
    if not block_od.size:
        block_od = np.zeros(1, np.float32)
    return {
        "slide_id": slide_id,
        "grid_mpp": round(mpp, 6),
        "tissue_area_mm2": round(tissue_mm2, 6),
        "tissue_pixels": n_tissue,
        "classes": dict(ARTEFACT_CLASSES),
        "fractions": {name: round(value, 6) for name, value in fractions.items()},
        "clean_fraction": round(float(clean.sum()) / n_tissue, 6) if n_tissue else 0.0,
        "stain": {
            "median_block_od": round(float(np.median(block_od)), 4),
            "p5_block_od": round(float(np.percentile(block_od, 5)), 4),
            "p95_block_od": round(float(np.percentile(block_od, 95)), 4),
            "type": stain_type.label,
            "dab_fraction": round(stain_type.dab_fraction, 4),
            "eosin_fraction": round(stain_type.eosin_fraction, 4),
        },
        "blur_min_score": params.blur.min_score,
        "detectors": list(params.detectors),
        "verdict": verdict,
        "reasons": reasons,
    }


def run_detect_artefacts(
    slide_path: str | os.PathLike[str],
    tissue_png: str | os.PathLike[str],
    *,
    slide_id: str,
    mpp: float | None,
    params: ArtefactParams,
    mask_png: str | os.PathLike[str],
    qc_json: str | os.PathLike[str],
    preview_jpg: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
) -> None:
    """Detect artefacts inside one slide's tissue and write class mask, qc.json and preview.

    Args:
        slide_path: the slide file (or DICOM folder).
        tissue_png: tissue mask from `run_segment_tissue`; its grid is reused.
        slide_id: manifest id.
        mpp: manifest µm/px override (None: from metadata).
        params: detector thresholds and verdict limits.
        mask_png: uint8 class mask (codes of `ARTEFACT_CLASSES`) on the tissue grid.
        qc_json: per-class area fractions of tissue, stain statistics, verdict and reasons.
        preview_jpg: thumbnail with artefact classes tinted.
        sidecar: parameters, versions and input checksums.
    """
    logger.info("detect_artefacts %s: %s", slide_id, params)
    tissue = read_mask_png(tissue_png) > 0
    with open_slide(slide_path, slide_id=slide_id, mpp=mpp) as slide:
        thumb, grid_mpp = _read_grid_thumbnail(slide, tissue.shape, tissue_png)
    classes = classify(thumb, tissue, mpp=grid_mpp, params=params)
    summary = qc_summary(classes, thumb, slide_id=slide_id, mpp=grid_mpp, params=params)

    write_png(mask_png, classes)
    write_json(qc_json, summary)
    write_jpeg(preview_jpg, overlay(thumb, classes))
    write_sidecar(
        sidecar,
        stage="detect_artefacts",
        params=params,
        inputs=[slide_path, tissue_png],
        extra={"verdict": summary["verdict"], "fractions": summary["fractions"]},
    )
    logger.info("detect_artefacts %s: %s %s", slide_id, summary["verdict"], summary["fractions"])
