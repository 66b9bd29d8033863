"""A labelled JPEG grid of patches (rows = clusters) for eyeballing what selection kept."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from unipipe.provenance import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["compose_mosaic", "write_mosaic"]

_LABEL_PX = 110  # width of the label column on the left
_GAP_PX = 4
_BACKGROUND = (255, 255, 255)


def compose_mosaic(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]], *, tile_px: int, columns: int
) -> Image.Image:
    """Lay patches out as labelled rows.

    Args:
        rows: (label, patches) per row; patches are (h, w, 3) uint8, resized to tile_px.
        tile_px: side of each cell in mosaic pixels.
        columns: cells per row (rows with fewer patches are padded white).
    """
    n_rows = max(len(rows), 1)
    width = _LABEL_PX + columns * (tile_px + _GAP_PX) + _GAP_PX
    height = n_rows * (tile_px + _GAP_PX) + _GAP_PX
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if not rows:
        draw.text((_GAP_PX, _GAP_PX), "no patches selected", fill=(0, 0, 0))
    for r, (label, patches) in enumerate(rows):
        top = _GAP_PX + r * (tile_px + _GAP_PX)
        draw.text((_GAP_PX, top + tile_px // 2 - 6), label, fill=(0, 0, 0))
        for c, patch in enumerate(patches[:columns]):
            cell = Image.fromarray(np.ascontiguousarray(patch, dtype=np.uint8))
            if cell.size != (tile_px, tile_px):
                cell = cell.resize((tile_px, tile_px), Image.Resampling.LANCZOS)
            canvas.paste(cell, (_LABEL_PX + _GAP_PX + c * (tile_px + _GAP_PX), top))
    return canvas


def write_mosaic(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    path: str | os.PathLike[str],
    *,
    tile_px: int = 96,
    columns: int = 8,
    quality: int = 90,
) -> None:
    """Write the mosaic as a baseline JPEG without EXIF, atomically (byte-stable on rerun)."""
    image = compose_mosaic(rows, tile_px=tile_px, columns=columns)
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=quality, optimize=False, progressive=False)
    logger.info("wrote mosaic %s (%d rows)", path, len(rows))
