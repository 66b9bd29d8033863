"""Tissue polygons (with holes) from a mask, as QuPath-compatible GeoJSON in level-0 pixels."""

from __future__ import annotations

import os
import uuid
from typing import Any

import cv2
import numpy as np

from unipipe.provenance import write_json

__all__ = ["pieces_to_polygons", "polygons_to_geojson", "write_geojson"]

# QuPath's default colour for the "Tissue" class is not fixed; this green matches the preview.
_TISSUE_RGB = [0, 170, 0]
_NAMESPACE = uuid.UUID("5a1d0c5e-7d3b-4f4e-9a51-756e69706970")


def pieces_to_polygons(
    pieces: list[list[np.ndarray]], *, simplify_px: float
) -> list[list[np.ndarray]]:
    """OpenCV outlines [outer, holes...] as polygons of (n, 2) float (x, y) pixel centres.

    Rings are simplified with Douglas-Peucker at ``simplify_px``; rings left with fewer
    than 3 points are dropped. Polygons are ordered by decreasing outer area (ties by
    first point), so the order is stable between runs.
    """
    polygons = []
    for contours in pieces:
        rings = [_ring(c, simplify_px) for c in contours]
        if rings[0] is None:
            continue
        polygons.append([ring for ring in rings if ring is not None])
    polygons.sort(key=lambda rings: (-_area(rings[0]), rings[0][0].tolist()))
    return polygons


def _area(ring: np.ndarray) -> float:
    return abs(float(cv2.contourArea(ring.astype(np.float32))))


def _ring(contour: np.ndarray, simplify_px: float) -> np.ndarray | None:
    if simplify_px > 0:
        contour = cv2.approxPolyDP(contour, simplify_px, closed=True)
    points = contour.reshape(-1, 2).astype(np.float64)
    return points if len(points) >= 3 else None


def polygons_to_geojson(
    polygons: list[list[np.ndarray]],
    *,
    slide_id: str,
    level0_per_px: float,
    dimensions: tuple[int, int],
    classification: str = "Tissue",
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of QuPath annotations, one Polygon feature per polygon.

    Args:
        polygons: rings in mask pixels, as from `pieces_to_polygons`.
        slide_id: used to derive stable feature ids (UUIDv5), so reruns give equal files.
        level0_per_px: level-0 pixels per mask pixel (thumb_mpp / slide mpp).
        dimensions: level-0 (w, h); coordinates are clipped to it.
        classification: QuPath class name.
    """
    w0, h0 = dimensions
    features = []
    for index, rings in enumerate(polygons):
        coordinates = []
        for ring in rings:
            # Pixel centres of the mask grid, in level-0 pixels (x right, y down).
            level0 = (ring + 0.5) * level0_per_px
            level0[:, 0] = np.clip(level0[:, 0], 0, w0)
            level0[:, 1] = np.clip(level0[:, 1], 0, h0)
            points = np.round(level0, 1).tolist()
            coordinates.append([*points, points[0]])  # GeoJSON rings are closed
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(_NAMESPACE, f"{slide_id}/{classification}/{index}")),
                "geometry": {"type": "Polygon", "coordinates": coordinates},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": classification, "color": _TISSUE_RGB},
                    "isLocked": False,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike[str], collection: dict[str, Any]) -> None:
    """Write the collection as sorted JSON, atomically (byte-identical for equal input)."""
    write_json(path, collection)
