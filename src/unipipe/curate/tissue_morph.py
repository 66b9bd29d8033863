"""Morphology in physical units: kernels and area filters sized in µm at a mask's mpp."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "filter_components",
    "odd_kernel_px",
    "remove_small_objects",
    "square",
    "um2_to_px",
    "um_to_px",
]


def um_to_px(length_um: float, mpp: float) -> float:
    """A length in µm as pixels at ``mpp`` µm/px."""
    return length_um / mpp


def um2_to_px(area_um2: float, mpp: float) -> float:
    """An area in µm² as pixels at ``mpp`` µm/px."""
    return area_um2 / (mpp * mpp)


def odd_kernel_px(length_um: float, mpp: float, *, minimum: int = 1) -> int:
    """The odd kernel size in pixels closest to ``length_um`` at ``mpp`` (at least ``minimum``)."""
    size = max(minimum, round(um_to_px(length_um, mpp)))
    return size if size % 2 == 1 else size + 1


def square(side_um: float, mpp: float) -> np.ndarray:
    """Square structuring element of ``side_um`` µm at ``mpp``; separable, so fast."""
    size = odd_kernel_px(side_um, mpp)
    return np.ones((size, size), np.uint8)


def filter_components(
    mask: np.ndarray,
    *,
    min_area_px: float,
    min_hole_px: float,
    evidence: np.ndarray | None = None,
    min_evidence_fraction: float = 0.0,
) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Drop pieces smaller than ``min_area_px`` and fill holes smaller than ``min_hole_px``.

    Works on outlines (OpenCV two-level contours) rather than labelled pixels: about ten
    times faster, and redrawing the kept outlines with their holes reproduces the kept
    pixels exactly. Areas are polygon areas of the outlines (holes subtracted).

    Args:
        mask: bool mask.
        min_area_px: smallest piece kept, in pixels.
        min_hole_px: smallest hole kept open, in pixels.
        evidence: optional bool mask; a piece is then kept only if at least
            ``min_evidence_fraction`` of its pixels are evidence.
        min_evidence_fraction: see ``evidence``.

    Returns:
        The filtered bool mask and, per kept piece, its contours [outer, kept holes...]
        as OpenCV int32 (n, 1, 2) arrays in pixel (x, y).
    """
    mask_u8 = _as_u8(mask)
    contours, hierarchy = cv2.findContours(mask_u8, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return np.zeros(mask.shape, bool), []
    links = hierarchy[0]  # rows: next, previous, first child, parent
    check = evidence is not None and min_evidence_fraction > 0
    evidence_u8 = _as_u8(evidence) if check else None
    pieces = []
    for i in np.flatnonzero(links[:, 3] == -1):
        holes = []
        child = links[i][2]
        while child != -1:
            holes.append(contours[child])
            child = links[child][0]
        hole_areas = [cv2.contourArea(h) for h in holes]
        if cv2.contourArea(contours[i]) - sum(hole_areas) < min_area_px:
            continue
        if check and not _has_evidence(contours[i], mask_u8, evidence_u8, min_evidence_fraction):
            continue
        kept_holes = [h for h, a in zip(holes, hole_areas, strict=True) if a >= min_hole_px]
        pieces.append([contours[i], *kept_holes])
    return _draw_pieces(mask.shape, pieces), pieces


def _as_u8(mask: np.ndarray) -> np.ndarray:
    """A contiguous bool mask seen as uint8 0/1 without a copy (other masks are converted)."""
    if mask.dtype == bool and mask.flags.c_contiguous:
        return mask.view(np.uint8)
    return mask.astype(np.uint8)


def _has_evidence(
    outer: np.ndarray, mask: np.ndarray, evidence: np.ndarray, min_fraction: float
) -> bool:
    """Whether evidence covers ``min_fraction`` of the mask pixels inside ``outer``."""
    x, y, w, h = cv2.boundingRect(outer)
    inside = np.zeros((h, w), np.uint8)
    cv2.drawContours(inside, [outer - np.array([x, y], np.int32)], -1, 1, cv2.FILLED)
    area = cv2.countNonZero(cv2.bitwise_and(inside, mask[y : y + h, x : x + w]))
    support = cv2.countNonZero(cv2.bitwise_and(inside, evidence[y : y + h, x : x + w]))
    return support >= min_fraction * area


def _draw_pieces(shape: tuple[int, ...], pieces: list[list[np.ndarray]]) -> np.ndarray:
    """Rasterise [outer, holes...] outlines exactly as findContours traced them."""
    out = np.zeros(shape[:2], np.uint8)
    if not pieces:
        return out.astype(bool)
    flat, links = [], []
    for rings in pieces:
        outer = len(flat)
        n_holes = len(rings) - 1
        links.append([-1, -1, outer + 1 if n_holes else -1, -1])
        flat.append(rings[0])
        for k, hole in enumerate(rings[1:]):
            index = outer + 1 + k
            links.append([index + 1 if k + 1 < n_holes else -1, index - 1 if k else -1, -1, outer])
            flat.append(hole)
    # Chain the outer contours as siblings so one call draws every piece.
    outers = [i for i, link in enumerate(links) if link[3] == -1]
    for a, b in zip(outers, outers[1:], strict=False):
        links[a][0], links[b][1] = b, a
    cv2.drawContours(
        out, flat, -1, 1, cv2.FILLED, hierarchy=np.array([links], np.int32), maxLevel=1
    )
    return out.view(bool)  # drawn as 0/1, so the bytes already are a bool mask


def remove_small_objects(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """Drop 8-connected pieces of a bool mask smaller than ``min_area_px`` (holes are kept)."""
    if min_area_px <= 1 or not mask.any():
        return mask
    return filter_components(mask, min_area_px=min_area_px, min_hole_px=0.0)[0]
