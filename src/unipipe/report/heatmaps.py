"""Per-patch score heatmaps (ABMIL attention, MI-SimpleShot similarity) over slide thumbnails."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image

from unipipe.errors import ConfigError
from unipipe.provenance import atomic_path
from unipipe.slide import open_slide

logger = logging.getLogger(__name__)

__all__ = ["BAG_MPP", "HEATMAP_COLUMNS", "overlay_scores", "render_slide_heatmaps"]

# Columns of heatmaps.parquet that the renderer needs (size_l0 is optional).
HEATMAP_COLUMNS = ("slide_id", "x", "y", "score")
# Level-0 µm/px assumed for a feature bag without a slide file or an ``mpp`` entry: 20x scans,
# the magnification UNI's slide tasks are embedded at. Only the canvas scale depends on it.
BAG_MPP = 0.5
_WHITE = 255
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _normalise(scores: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a slide whose scores are all equal maps to 0.5 (no patch stands out)."""
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 0:
        return np.full(len(scores), 0.5)
    return (scores - low) / (high - low)


def overlay_scores(
    background: np.ndarray,
    boxes_px: np.ndarray,
    scores: np.ndarray,
    *,
    cmap: str = "coolwarm",
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend coloured squares of normalised scores over an RGB image.

    Args:
        background: (H, W, 3) uint8 image the boxes are drawn on (a thumbnail or white).
        boxes_px: (N, 3) x, y of the top-left corner and side, in ``background`` pixels.
        scores: (N,) scores in [0, 1]; 1 is the colour map's high end.
        cmap: a matplotlib colour map name.
        alpha: opacity of the squares; where squares overlap the higher score is drawn.

    Returns:
        (H, W, 3) uint8 blended image (``background`` is not modified).
    """
    height, width = background.shape[:2]
    colours = matplotlib.colormaps[cmap](scores)[:, :3] * 255.0  # (N, 3) RGB in [0, 255]
    layer = np.zeros((height, width, 3), np.float64)
    covered = np.zeros((height, width), bool)
    # Ascending score order: the highest-scoring patch ends on top of any overlap.
    for i in np.argsort(scores, kind="stable"):
        x, y, side = (int(v) for v in boxes_px[i])
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, width), min(y + side, height)
        if x1 <= x0 or y1 <= y0:
            continue
        layer[y0:y1, x0:x1] = colours[i]
        covered[y0:y1, x0:x1] = True
    out = background.astype(np.float64)
    out[covered] = (1.0 - alpha) * out[covered] + alpha * layer[covered]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    table = pd.read_parquet(path)
    missing = sorted(set(HEATMAP_COLUMNS) - set(table.columns))
    if missing:
        raise ConfigError(
            f"{os.fspath(path)} lacks columns {missing}; a heatmaps.parquet as run_evaluate_slides "
            f"writes it has {list(HEATMAP_COLUMNS)} (+ size_l0)"
        )
    table["slide_id"] = table["slide_id"].astype(str)
    return table


def _background(
    slide_id: str,
    path: str | os.PathLike[str] | None,
    rows: pd.DataFrame,
    sides_l0: np.ndarray,
    *,
    thumb_mpp: float,
    mpp: float | None,
) -> tuple[np.ndarray, float]:
    """The thumbnail (or a white canvas covering every patch) and its px per level-0 px."""
    if path is not None:
        with open_slide(path, slide_id=slide_id, mpp=mpp) as slide:
            return slide.read_thumbnail(thumb_mpp), slide.mpp / thumb_mpp
    scale = (mpp or BAG_MPP) / thumb_mpp
    width = max(1, math.ceil(float((rows["x"].to_numpy() + sides_l0).max()) * scale))
    height = max(1, math.ceil(float((rows["y"].to_numpy() + sides_l0).max()) * scale))
    return np.full((height, width, 3), _WHITE, np.uint8), scale


def render_slide_heatmaps(
    heatmaps_parquet: str | os.PathLike[str],
    slide_paths: Mapping[str, str | os.PathLike[str] | None],
    out_dir: str | os.PathLike[str],
    *,
    max_slides: int = 8,
    thumb_mpp: float = 8.0,
    mpp: Mapping[str, float] | None = None,
    patch_size_l0: int = 256,
    cmap: str = "coolwarm",
    alpha: float = 0.5,
    quality: int = 90,
) -> list[Path]:
    """Write out_dir/{slide_id}.jpg: each test slide's patch scores over its thumbnail.

    Scores are min-max normalised per slide, so colours compare patches within a slide,
    never across slides. Slides are taken in sorted id order, the first ``max_slides``.

    Args:
        heatmaps_parquet: slide_id, patch, x, y (level-0 px of the patch's top-left, -1 when
            the bag had no coords), score, and optionally size_l0 (patch side in level-0 px).
            Rows with x or y of -1, or a non-finite score, are skipped and counted in the log.
        slide_paths: slide id -> slide file; None (or an id not listed) draws on a white
            canvas sized to the coords, for feature bags that came without their slide.
        out_dir: folder of the JPEGs (created).
        max_slides: most slides drawn.
        thumb_mpp: µm/px of the thumbnail the scores are drawn on.
        mpp: slide id -> level-0 µm/px, overriding the slide metadata as in the manifest;
            for a canvas it sets the scale (else ``BAG_MPP``).
        patch_size_l0: patch side in level-0 px where the table has no size_l0 column, or
            size_l0 is -1 (the bag did not record it).
        cmap: matplotlib colour map; its high end marks the highest score of the slide.
        alpha: opacity of the score squares.
        quality: JPEG quality (baseline JPEG without EXIF, byte-stable on rerun).

    Returns:
        The JPEGs written, in slide id order.
    """
    if not thumb_mpp > 0:
        raise ConfigError(f"thumb_mpp must be positive (µm/px), got {thumb_mpp!r}")
    if cmap not in matplotlib.colormaps:
        raise ConfigError(f"heatmap colour map {cmap!r} is not a matplotlib colour map")
    table = _read_table(heatmaps_parquet)
    mpp = dict(mpp or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    written = []
    for slide_id in sorted(table["slide_id"].unique())[:max_slides]:
        rows = table[table["slide_id"] == slide_id]
        usable = (rows["x"] >= 0) & (rows["y"] >= 0) & np.isfinite(rows["score"])
        if (~usable).any():
            logger.warning("heatmap %s: %s of %s patches have no coords or score; skipped",
                           slide_id, int((~usable).sum()), len(rows))  # fmt: skip
        rows = rows[usable]
        if rows.empty:
            continue
        sides_l0 = np.full(len(rows), float(patch_size_l0))
        if "size_l0" in rows.columns:
            # size_l0 is -1 where the bag did not record its patch side.
            recorded = rows["size_l0"].to_numpy(np.float64)
            sides_l0 = np.where(recorded > 0, recorded, sides_l0)
        background, scale = _background(slide_id, slide_paths.get(slide_id), rows, sides_l0,
                                        thumb_mpp=thumb_mpp, mpp=mpp.get(slide_id))  # fmt: skip
        # Level-0 px -> thumbnail px, like read_thumbnail's pixel grid; sides at least 1 px.
        boxes = np.stack([np.floor(rows["x"].to_numpy() * scale),
                          np.floor(rows["y"].to_numpy() * scale),
                          np.maximum(1, np.ceil(sides_l0 * scale))], axis=1)  # fmt: skip
        image = overlay_scores(background, boxes, _normalise(rows["score"].to_numpy(np.float64)),
                               cmap=cmap, alpha=alpha)  # fmt: skip
        path = out / f"{_UNSAFE.sub('_', slide_id)}.jpg"
        with atomic_path(path) as tmp:
            Image.fromarray(image).save(tmp, format="JPEG", quality=quality, optimize=False,
                                        progressive=False)  # fmt: skip
        written.append(path)
        logger.info("heatmap %s: %s patches over %sx%s px", slide_id, len(rows),
                    image.shape[1], image.shape[0])  # fmt: skip
    return written
