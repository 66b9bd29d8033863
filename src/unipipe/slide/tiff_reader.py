"""tifffile backend: OME-TIFF and plain (tiled or striped) RGB TIFFs that OpenSlide refuses."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile
import zarr

from unipipe.slide.base import Slide
from unipipe.slide.batch import TileGrid
from unipipe.slide.messages import ReaderRefusedError, plausible_mpp, resolve_mpp, unsupported
from unipipe.slide.tiff_tiles import TiledPage, tiled_page_supported

__all__ = [
    "TiffSlide",
    "check_brightfield_rgb",
    "main_series",
    "ome_mpp",
    "open_with_tifffile",
    "resolution_tag_mpp",
]

logger = logging.getLogger(__name__)

# OME length units -> µm.
_OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}

# TIFF ResolutionUnit -> µm per unit (2 = inch, 3 = centimetre; 1 = none has no size).
_RESOLUTION_UNIT_UM = {2: 25400.0, 3: 10000.0}


class TiffSlide(Slide):
    """A slide read with tifffile.

    Tiled levels are read tile by tile with a decoded-tile cache (`TiledPage`); striped
    levels through tifffile's Zarr view, which decodes only the strips hit.
    """

    reader = "tifffile"

    def __init__(self, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, **kwargs) -> None:
        super().__init__(**kwargs)
        self._tif = tif
        self._levels: list[TiledPage | zarr.Array] = []
        dimensions = []
        for i, level in enumerate(series.levels):
            page = level.keyframe
            if len(level.pages) == 1 and tiled_page_supported(page):
                self._levels.append(TiledPage(tif, page))
            else:
                self._levels.append(zarr.open_array(store=series.aszarr(level=i), mode="r"))
            dimensions.append((int(level.shape[1]), int(level.shape[0])))
        self._dimensions = tuple(dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(w, h) of every pyramid level, finest first."""
        return self._dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per level pixel (from the widths)."""
        w0 = self._dimensions[0][0]
        return tuple(w0 / w for w, _ in self._dimensions)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        source = self._levels[level]
        if isinstance(source, TiledPage):
            return source.read(x, y, w, h)
        return np.ascontiguousarray(source[y : y + h, x : x + w, :3])

    def _tile_grid(self, level: int) -> TileGrid | None:
        source = self._levels[level]
        return source.grid() if isinstance(source, TiledPage) else None

    def clear_cache(self) -> None:
        """Drop the decoded tiles of tiled levels."""
        for source in self._levels:
            if isinstance(source, TiledPage):
                source.clear()

    def close(self) -> None:
        """Close the TIFF file."""
        self._tif.close()


def open_with_tifffile(path: Path, *, slide_id: str, mpp: float | None) -> TiffSlide:
    """Open ``path`` with tifffile, or raise `ReaderRefusedError` (not a TIFF) or
    `UnsupportedSlideError` (a TIFF, but not brightfield RGB)."""
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError) as err:
        raise ReaderRefusedError(f"tifffile: {err}") from err
    try:
        series = main_series(tif)
        check_brightfield_rgb(series, slide_id=slide_id, path=path)
        metadata_mpp = ome_mpp(tif) or resolution_tag_mpp(series.keyframe)
        level0_mpp = resolve_mpp(metadata_mpp, mpp, slide_id=slide_id, path=path)
        return TiffSlide(tif, series, slide_id=slide_id, path=path, mpp=level0_mpp)
    except Exception:
        tif.close()
        raise


def main_series(tif: tifffile.TiffFile) -> tifffile.TiffPageSeries:
    """The series with the most pixels (label and macro images are smaller)."""
    if not tif.series:
        raise ReaderRefusedError("tifffile: no image series")
    return max(
        tif.series, key=lambda s: int(np.prod(s.shape[:2] if s.axes.endswith("S") else s.shape))
    )


def check_brightfield_rgb(series: tifffile.TiffPageSeries, *, slide_id: str, path: Path) -> None:
    """Raise `UnsupportedSlideError` unless the series is 8-bit interleaved RGB(A)."""
    axes, shape, dtype = series.axes, series.shape, np.dtype(series.dtype)
    photometric = series.keyframe.photometric
    is_colour = photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    if is_colour and axes == "YXS" and shape[-1] in (3, 4) and dtype == np.uint8:
        return
    channels = [shape[axes.index(a)] for a in "CS" if a in axes]
    n_channels = int(np.prod(channels)) if channels else 1
    if is_colour:
        why = f"its RGB samples are {dtype} in axes {axes}, not 8-bit interleaved"
    elif n_channels > 1:
        why = (
            f"it has {n_channels} separate {dtype} channels (axes {axes}), i.e. multichannel "
            "fluorescence, not a brightfield RGB scan"
        )
    else:
        why = f"it is {dtype.itemsize * 8}-bit greyscale (axes {axes}), not a brightfield RGB scan"
    raise unsupported(slide_id, path, why)


def ome_mpp(tif: tifffile.TiffFile) -> float | None:
    """Level-0 µm/px from the first OME ``Pixels`` element's PhysicalSizeX, if any."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        logger.warning("%s: unreadable OME-XML; ignoring it", tif.filename)
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Pixels" or "PhysicalSizeX" not in element.attrib:
            continue
        unit = element.attrib.get("PhysicalSizeXUnit", "µm")
        if unit not in _OME_UNIT_UM:
            logger.warning("%s: unknown OME unit %r; ignoring PhysicalSizeX", tif.filename, unit)
            return None
        return plausible_mpp(float(element.attrib["PhysicalSizeX"]) * _OME_UNIT_UM[unit])
    return None


def resolution_tag_mpp(page: tifffile.TiffPage) -> float | None:
    """Level-0 µm/px from the XResolution and ResolutionUnit tags, if they give a real size."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    numerator, denominator = tags["XResolution"].value
    if unit not in _RESOLUTION_UNIT_UM or numerator == 0 or denominator == 0:
        return None
    pixels_per_unit = numerator / denominator
    return plausible_mpp(_RESOLUTION_UNIT_UM[unit] / pixels_per_unit)
