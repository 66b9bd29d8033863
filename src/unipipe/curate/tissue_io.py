"""Deterministic image writers and readers for curation outputs (no timestamps, atomic)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from unipipe.errors import UnipipeError
from unipipe.provenance import atomic_path

__all__ = [
    "JPEG_QUALITY",
    "PREVIEW_MAX_PX",
    "fit_preview",
    "read_mask_png",
    "write_jpeg",
    "write_png",
]

JPEG_QUALITY = 90

# Longest side of preview images; masks are never downsized.
PREVIEW_MAX_PX = 2048


def fit_preview(rgb: np.ndarray, max_px: int = PREVIEW_MAX_PX) -> np.ndarray:
    """``rgb`` area-downsized so that its longest side is at most ``max_px`` (else as is)."""
    scale = min(1.0, max_px / max(rgb.shape[:2]))
    if scale == 1.0:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write a uint8 grey (h, w) or RGB (h, w, 3) image as PNG; same pixels give same bytes."""
    data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", data, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise UnipipeError(f"could not encode PNG for {path}")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(encoded.tobytes())


def write_jpeg(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = JPEG_QUALITY) -> None:
    """Write an RGB image as baseline JPEG without EXIF (so no dates); deterministic bytes."""
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise UnipipeError(f"could not encode JPEG for {path}")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(encoded.tobytes())


def read_mask_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a single-channel uint8 mask PNG as written by `write_png`."""
    mask = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise UnipipeError(
            f"mask {path} is missing or not an image; rerun the stage that writes it"
        )
    if mask.ndim != 2:
        raise UnipipeError(f"mask {path} has shape {mask.shape}; expected a single-channel PNG")
    return mask
