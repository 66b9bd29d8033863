"""Tile grids over the tissue mask at each (size, mpp) spec, with tissue, artefact and blur keep rules."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from unipipe.curate.artefacts import ARTEFACT_CLASSES, blur_score, check_class_names
from unipipe.curate.features import FEATURE_NAMES, patch_features
from unipipe.errors import ConfigError, SlideError
from unipipe.provenance import write_parquet, write_sidecar
from unipipe.slide import open_slide

logger = logging.getLogger(__name__)

__all__ = [
    "FEATURE_SIZE_COLUMN",
    "TileSpec",
    "TilingParams",
    "grid_origins",
    "mask_fractions",
    "read_mask",
    "run_tile_slide",
    "summed_area",
    "table_fractions",
    "tile_slide",
]

# Highest code of the artefact class mask that is not an artefact (1 = clean tissue).
_CLEAN_CODE = 1

# Column of tiles.parquet saying at which side (px) the selection features were computed.
FEATURE_SIZE_COLUMN = "feature_size_px"


@dataclasses.dataclass(frozen=True)
class TileSpec:
    """One tile geometry: ``size_px`` pixels square at ``mpp`` µm/px (target, not slide, mpp)."""

    size_px: int
    mpp: float

    def __post_init__(self) -> None:
        if not isinstance(self.size_px, int) or isinstance(self.size_px, bool) or self.size_px < 8:
            raise ConfigError(
                f"curate.tiling.specs: size_px must be an int >= 8, got {self.size_px!r}"
            )
        if not isinstance(self.mpp, int | float) or not self.mpp > 0:
            raise ConfigError(
                f"curate.tiling.specs: mpp must be a positive number, got {self.mpp!r}"
            )
        object.__setattr__(self, "mpp", float(self.mpp))

    @property
    def name(self) -> str:
        """Stable text name, e.g. ``256px_0.5mpp``; used for Zarr sub-groups and index rows."""
        return f"{self.size_px}px_{self.mpp:g}mpp"

    @classmethod
    def coerce(cls, value: TileSpec | Mapping[str, Any] | Sequence[Any]) -> TileSpec:
        """Build a spec from a spec, a ``{size_px, mpp}`` mapping (config.yaml) or a pair."""
        if isinstance(value, TileSpec):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"size_px", "mpp"})
            if unknown:
                raise ConfigError(
                    f"curate.tiling.specs: unknown key(s) {unknown}; each spec is {{size_px, mpp}}"
                )
            return cls(**value)
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
            return cls(*value)
        raise ConfigError(
            f"curate.tiling.specs: cannot read {value!r} as a spec; write {{size_px: 256, mpp: 0.5}}"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TilingParams:
    """Grid and keep rules of tiling (config section ``curate.tiling``).

    Attributes:
        specs: tile geometries; every spec gets its own grid (Mass-100K: 256 and 512 px at 0.5).
        min_tissue_fraction: keep a tile only if at least this fraction of its area is tissue.
        max_artefact_fraction: keep a tile only if each artefact class covers at most this
            fraction of its area (default for every class).
        max_class_fraction: per-class overrides of ``max_artefact_fraction``, by class name.
        min_blur_score: keep a tile only if ``blur_score`` of its patch (read at the spec's mpp)
            is at least this; 0 turns the blur rule off. Scale: variance of the Laplacian
            (``unipipe.curate.artefacts.blur_score``); the default is that module's
            ``BlurParams.min_score`` (sharp H&E at 0.5 mpp scores 700-3300, blurred 30-100).
        overlap_fraction: overlap of neighbouring tiles as a fraction of the tile size
            (stride = size * (1 - overlap_fraction)); 0 gives a non-overlapping grid.
        min_candidate_tissue_fraction: grid tiles with less tissue than this are not listed
            at all in tiles.parquet (keeps the table small on mostly blank slides).
    """

    specs: tuple[TileSpec, ...] = (TileSpec(256, 0.5),)
    min_tissue_fraction: float = 0.5
    max_artefact_fraction: float = 0.1
    max_class_fraction: Mapping[str, float] = dataclasses.field(default_factory=dict)
    min_blur_score: float = 150.0
    overlap_fraction: float = 0.0
    min_candidate_tissue_fraction: float = 0.01

    def __post_init__(self) -> None:
        specs = self.specs
        if isinstance(specs, TileSpec | Mapping):
            specs = [specs]
        specs = tuple(TileSpec.coerce(s) for s in specs)
        if not specs:
            raise ConfigError("curate.tiling.specs: give at least one {size_px, mpp} spec")
        if len(set(specs)) != len(specs):
            raise ConfigError(f"curate.tiling.specs: duplicate specs in {specs}")
        object.__setattr__(self, "specs", specs)
        object.__setattr__(self, "max_class_fraction", dict(self.max_class_fraction))
        for key in (
            "min_tissue_fraction",
            "max_artefact_fraction",
            "min_candidate_tissue_fraction",
        ):
            _check_fraction(key, getattr(self, key))
        check_class_names(self.max_class_fraction, "curate.tiling.max_class_fraction")
        for name, value in self.max_class_fraction.items():
            _check_fraction(f"max_class_fraction.{name}", value)
        if not 0.0 <= self.overlap_fraction < 1.0:
            raise ConfigError(
                f"curate.tiling.overlap_fraction must be in [0, 1), got {self.overlap_fraction!r}"
            )
        if self.min_blur_score < 0:
            raise ConfigError(
                f"curate.tiling.min_blur_score must be >= 0, got {self.min_blur_score!r}"
            )

    def class_limit(self, name: str) -> float:
        """Largest allowed area fraction of artefact class ``name`` in a kept tile."""
        return float(self.max_class_fraction.get(name, self.max_artefact_fraction))


def _check_fraction(key: str, value: Any) -> None:
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"curate.tiling.{key} must be a fraction in [0, 1], got {value!r}")


def read_mask(png: str | os.PathLike[str]) -> np.ndarray:
    """Read a single-channel mask PNG as a (h, w) uint8 array (mask grid, not level 0)."""
    with Image.open(png) as img:
        mask = np.asarray(img)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return np.ascontiguousarray(mask, dtype=np.uint8)


def grid_origins(length_px: int, footprint_px: float, stride_px: float) -> np.ndarray:
    """Level-0 start positions of a 1-D grid that covers ``length_px`` with whole tiles.

    Tiles step by ``stride_px`` from 0; where the strip left after the last whole step is
    at least one pixel wide, one more tile is anchored to end at the slide's edge, so the
    right and bottom strips are tiled too. That last tile overlaps its neighbour by
    ``footprint_px`` minus the strip, and every tile lies fully inside the slide (its
    pixels are real, never padding). A slide shorter than one tile gets no tile.
    """
    if footprint_px > length_px:
        return np.zeros(0, dtype=np.int64)
    count = int(math.floor((length_px - footprint_px) / stride_px + 1e-9)) + 1
    origins = np.floor(np.arange(count) * stride_px + 1e-9).astype(np.int64)
    edge = int(math.floor(length_px - footprint_px + 1e-9))
    if edge - origins[-1] >= 1:
        origins = np.append(origins, edge)
    return origins


def summed_area(mask: np.ndarray) -> np.ndarray:
    """(h + 1, w + 1) summed-area table: entry [i, j] counts the true pixels of mask[:i, :j].

    Integers from OpenCV's integral image, int32 (4 bytes per mask pixel; int64 sums would
    take 8 and two cumulative passes) unless the mask has 2**31 pixels or more, where
    float64 (exact up to 2**53) is used instead.
    """
    ones = np.ascontiguousarray(mask if mask.dtype == bool else mask != 0).view(np.uint8)
    depth = cv2.CV_32S if ones.size < 2**31 else cv2.CV_64F
    return cv2.integral(ones, sdepth=depth)


def table_fractions(
    table: np.ndarray,
    scale: tuple[float, float],
    xs: np.ndarray,
    ys: np.ndarray,
    footprint_px: float,
) -> np.ndarray:
    """Fraction of each tile's area that is true in the mask whose `summed_area` is ``table``.

    Args:
        table: (h + 1, w + 1) summed-area table of an (h, w) mask on the thumbnail grid.
        scale: (sx, sy) mask pixels per level-0 pixel.
        xs, ys: level-0 top-left corners of the tiles, (n,) each.
        footprint_px: tile side in level-0 pixels.

    Returns:
        (n,) float64 fractions over the mask pixels each tile covers.
    """
    h, w = table.shape[0] - 1, table.shape[1] - 1
    sx, sy = scale
    x0 = np.clip(np.floor(xs * sx + 0.5).astype(np.int64), 0, w - 1)
    y0 = np.clip(np.floor(ys * sy + 0.5).astype(np.int64), 0, h - 1)
    x1 = np.clip(np.floor((xs + footprint_px) * sx + 0.5).astype(np.int64), x0 + 1, w)
    y1 = np.clip(np.floor((ys + footprint_px) * sy + 0.5).astype(np.int64), y0 + 1, h)
    inside = table[y1, x1].astype(np.int64) - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return inside / ((x1 - x0) * (y1 - y0))


def mask_fractions(
    mask: np.ndarray,
    scale: tuple[float, float],
    xs: np.ndarray,
    ys: np.ndarray,
    footprint_px: float,
) -> np.ndarray:
    """Fraction of each tile's area where ``mask`` is true.

    Args:
        mask: (h, w) bool mask on the thumbnail grid.
        scale: (sx, sy) mask pixels per level-0 pixel.
        xs, ys: level-0 top-left corners of the tiles, (n,) each.
        footprint_px: tile side in level-0 pixels.

    Returns:
        (n,) float64 fractions from a summed-area table over the mask pixels each tile covers.
    """
    return table_fractions(summed_area(mask), scale, xs, ys, footprint_px)


def _artefact_classes() -> dict[str, int]:
    """Artefact class name -> code of the class mask (background and clean tissue left out)."""
    return {name: int(code) for name, code in ARTEFACT_CLASSES.items() if code > _CLEAN_CODE}


@dataclasses.dataclass
class _SpecGrid:
    """The grid tiles of one spec listed in tiles.parquet, level-0 top-left corners."""

    spec: TileSpec
    footprint_px: float  # level-0 px per tile side
    xs: np.ndarray
    ys: np.ndarray


def _spec_grid(slide: Any, spec: TileSpec, params: TilingParams) -> _SpecGrid:
    """Every grid tile of ``spec``, row-major (y, then x), before the listing rule."""
    width, height = slide.dimensions
    footprint = spec.size_px * spec.mpp / slide.mpp
    stride = footprint * (1.0 - params.overlap_fraction)
    gx, gy = grid_origins(width, footprint, stride), grid_origins(height, footprint, stride)
    ys, xs = (a.ravel() for a in np.meshgrid(gy, gx, indexing="ij"))
    return _SpecGrid(spec, footprint, xs, ys)


def _fractions(
    mask: np.ndarray, scale: tuple[float, float], grids: Sequence[_SpecGrid]
) -> list[np.ndarray]:
    """Per spec, the fraction of each listed tile where ``mask`` (bool) is true.

    One summed-area table serves every spec and is freed on return: the tables are this
    stage's largest arrays. A mask without a true pixel needs none (all fractions 0).
    """
    if not mask.any():
        return [np.zeros(len(g.xs)) for g in grids]
    table = summed_area(mask)
    return [table_fractions(table, scale, g.xs, g.ys, g.footprint_px) for g in grids]


def _spec_frame(
    slide: Any,
    grid: _SpecGrid,
    tissue_fraction: np.ndarray,
    class_fractions: Mapping[str, np.ndarray],
    params: TilingParams,
) -> pd.DataFrame:
    """Rows of tiles.parquet for one spec up to the mask rules: ``keep`` before blur."""
    spec, xs, ys = grid.spec, grid.xs, grid.ys
    frame = pd.DataFrame(
        {
            "slide_id": slide.slide_id,
            "x": xs,
            "y": ys,
            "size_px": np.full(len(xs), spec.size_px, dtype=np.int64),
            "mpp": np.full(len(xs), spec.mpp, dtype=np.float64),
            "level": np.full(len(xs), slide.best_level(spec.mpp), dtype=np.int64),
            "tissue_fraction": tissue_fraction,
        }
    )
    keep = tissue_fraction >= params.min_tissue_fraction
    for name, fraction in class_fractions.items():
        frame[f"{name}_fraction"] = fraction
        keep &= fraction <= params.class_limit(name)
    frame["keep"] = keep
    return frame


def _read_scores(
    slide: Any,
    frames: Sequence[pd.DataFrame],
    specs: Sequence[TileSpec],
    feature_size_px: int | None,
    min_blur_score: float,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per spec, blur scores (n,) and features (n, f) of the tiles that passed the mask rules.

    Features are computed only where the blur rule (``min_blur_score``) passes too, NaN
    elsewhere.

    One batched read for all specs, in row-major order of the tiles' corners, so a stored
    tile under a 256 px and a 512 px tile is decoded once for both. Features are of the
    tile's area read at ``feature_size_px`` (what selection used to read itself) and come
    from the same source box as the blur patch (``Slide.read_regions_multi``), so the
    values equal those of separate reads; f is 0 when ``feature_size_px`` is None.
    """
    geometries: list[tuple[int, float]] = []
    for spec in specs:
        geometries.append((spec.size_px, spec.mpp))
        if feature_size_px is not None:
            geometries.append((feature_size_px, spec.mpp * spec.size_px / feature_size_px))
    per_spec = len(geometries) // len(specs)
    picks = [np.flatnonzero(frame["keep"].to_numpy()) for frame in frames]
    spec_of = np.concatenate([np.full(len(p), k) for k, p in enumerate(picks)]).astype(np.int64)
    # Position of each read tile among its spec's picks.
    row_of = np.concatenate([np.arange(len(p)) for p in picks]).astype(np.int64)
    xs = np.concatenate([f["x"].to_numpy()[p] for f, p in zip(frames, picks, strict=True)])
    ys = np.concatenate([f["y"].to_numpy()[p] for f, p in zip(frames, picks, strict=True)])
    order = np.lexsort((spec_of, xs, ys))  # row-major (y, then x) over every spec
    wanted = np.zeros((len(order), len(geometries)), bool)
    for j in range(per_spec):
        wanted[np.arange(len(order)), spec_of[order] * per_spec + j] = True

    n_features = len(FEATURE_NAMES) if feature_size_px is not None else 0
    out = [(np.empty(len(p)), np.empty((len(p), n_features))) for p in picks]
    reads = slide.read_regions_multi(np.stack([xs[order], ys[order]], 1), geometries, wanted=wanted)
    for i, patches in zip(order, reads, strict=True):
        k, row = spec_of[i], row_of[i]
        blur, features = out[k]
        blur[row] = blur_score(patches[k * per_spec])
        if not n_features:
            continue
        # Only kept tiles are clustered: a blurred one's features would never be used.
        if blur[row] >= min_blur_score:
            features[row] = patch_features(patches[k * per_spec + 1])
        else:
            features[row] = np.nan
    return out


def _scatter(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """``values`` of ``rows`` spread over n rows, NaN elsewhere (tiles never read)."""
    out = np.full((n, *values.shape[1:]), np.nan)
    out[rows] = values
    return out


def tile_slide(
    slide: Any,
    tissue: np.ndarray,
    classes: np.ndarray,
    params: TilingParams,
    *,
    feature_size_px: int | None = None,
) -> pd.DataFrame:
    """All specs' tile rows for an open slide and its masks, in (spec, y, x) order.

    Args:
        slide: an open ``unipipe.slide.Slide``.
        tissue: (h, w) uint8 tissue mask (0/255) covering the whole slide.
        classes: (h, w) uint8 artefact class mask on the same grid.
        params: grid and keep rules.
        feature_size_px: if given, the selection features (``FEATURE_NAMES``) of every tile
            that is kept, from a patch of this side covering the tile (read with the blur
            patch), are added as columns (NaN for tiles not kept), with this side in ``FEATURE_SIZE_COLUMN``; the value of
            ``curate.selection.feature_size_px``. None: no feature columns.
    """
    _check_feature_size(feature_size_px)
    if tissue.shape != classes.shape:
        raise SlideError(
            f"slide {slide.slide_id}: tissue mask {tissue.shape} and artefact mask "
            f"{classes.shape} differ; regenerate both masks with the same thumb_mpp"
        )
    artefacts = _artefact_classes()
    unknown = sorted(set(params.max_class_fraction) - set(artefacts))
    if unknown:
        raise ConfigError(
            f"curate.tiling.max_class_fraction has unknown class(es) {unknown}; "
            f"artefact classes: {sorted(artefacts)}"
        )
    width, height = slide.dimensions
    scale = (tissue.shape[1] / width, tissue.shape[0] / height)  # mask px per level-0 px
    grids = [_spec_grid(slide, spec, params) for spec in params.specs]
    tissue_fractions = []
    for grid, fraction in zip(grids, _fractions(tissue > 0, scale, grids), strict=True):
        listed = fraction >= max(params.min_candidate_tissue_fraction, 1e-12)
        grid.xs, grid.ys = grid.xs[listed], grid.ys[listed]
        tissue_fractions.append(fraction[listed])
    class_fractions: list[dict[str, np.ndarray]] = [{} for _ in grids]
    for name, code in artefacts.items():
        for per_spec, fraction in zip(
            class_fractions, _fractions(classes == code, scale, grids), strict=True
        ):
            per_spec[name] = fraction
    frames = [
        _spec_frame(slide, grid, fraction, per_class, params)
        for grid, fraction, per_class in zip(grids, tissue_fractions, class_fractions, strict=True)
    ]

    # Blur needs pixels at the target mpp: read only tiles that passed the mask rules, and
    # take the selection features from the same read, so no later stage decodes them again.
    scores = _read_scores(slide, frames, params.specs, feature_size_px, params.min_blur_score)
    for frame, spec, (blur, features) in zip(frames, params.specs, scores, strict=True):
        _finish_frame(slide, frame, spec, blur, features, params, feature_size_px)
    return pd.concat(frames, ignore_index=True)


def _finish_frame(
    slide: Any,
    frame: pd.DataFrame,
    spec: TileSpec,
    blur: np.ndarray,
    features: np.ndarray,
    params: TilingParams,
    feature_size_px: int | None,
) -> None:
    """Add blur, the blur rule and the features to one spec's rows (read rows: ``keep``)."""
    keep = frame.pop("keep").to_numpy()
    picks = np.flatnonzero(keep)
    frame["blur_score"] = _scatter(blur, picks, len(frame))
    if params.min_blur_score > 0:
        keep = keep & (frame["blur_score"].to_numpy() >= params.min_blur_score)
    frame["keep"] = keep
    if feature_size_px is not None:
        frame[FEATURE_SIZE_COLUMN] = np.full(len(frame), feature_size_px, dtype=np.int64)
        frame[list(FEATURE_NAMES)] = _scatter(features, picks, len(frame))
    logger.info(
        "%s %s: %d grid tiles listed, %d kept", slide.slide_id, spec.name, len(frame), keep.sum()
    )


def _check_feature_size(feature_size_px: int | None) -> None:
    if feature_size_px is None:
        return
    if (
        not isinstance(feature_size_px, int | np.integer)
        or isinstance(feature_size_px, bool)
        or feature_size_px < 8
    ):
        raise ConfigError(
            f"curate.selection.feature_size_px must be an int >= 8, got {feature_size_px!r}"
        )


def run_tile_slide(
    slide_path: str | os.PathLike[str],
    tissue_png: str | os.PathLike[str],
    artefacts_png: str | os.PathLike[str],
    *,
    slide_id: str,
    mpp: float | None,
    params: TilingParams,
    tiles_parquet: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
    feature_size_px: int | None = None,
) -> None:
    """Stage ``tile_slide``: write tiles.parquet (one row per listed grid tile) and its sidecar.

    Args:
        slide_path: the slide file.
        tissue_png: tissue mask (uint8 0/255) covering the whole slide at the mask mpp.
        artefacts_png: artefact class mask on the same grid (codes of ``ARTEFACT_CLASSES``).
        slide_id: the manifest id.
        mpp: level-0 µm/px override (None: from the slide's metadata).
        params: grid and keep rules.
        tiles_parquet: output table; x, y are level-0 top-left pixels, ``mpp`` the target mpp,
            fractions are of the tile's area, ``blur_score`` is NaN where the tile failed the
            mask rules (its pixels were never read); with ``feature_size_px``, also the
            selection features (NaN where the tile is not kept) and ``FEATURE_SIZE_COLUMN``.
        sidecar: output JSON with parameters, versions and input checksums.
        feature_size_px: side of the patch the selection features are computed on
            (``curate.selection.feature_size_px``); None leaves the features out.
    """
    logger.info("tile_slide %s with %s", slide_id, params)
    tissue, classes = read_mask(tissue_png), read_mask(artefacts_png)
    with open_slide(slide_path, slide_id=slide_id, mpp=mpp) as slide:
        frame = tile_slide(slide, tissue, classes, params, feature_size_px=feature_size_px)
    write_parquet(frame, tiles_parquet)
    write_sidecar(
        sidecar,
        stage="tile_slide",
        params=params,
        inputs=[slide_path, tissue_png, artefacts_png],
        extra={
            "n_tiles": len(frame),
            "n_kept": int(frame["keep"].sum()),
            "feature_size_px": feature_size_px,
        },
    )
