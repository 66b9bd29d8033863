"""OpenSlide backend: Aperio SVS, Hamamatsu NDPI, MIRAX, multi-file DICOM WSI and the rest."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import cv2
import numpy as np
import openslide
import pydicom
import tifffile
from pydicom.encaps import generate_frames

from unipipe.slide.base import Slide
from unipipe.slide.batch import TileGrid
from unipipe.slide.messages import ReaderRefusedError, plausible_mpp, resolve_mpp
from unipipe.slide.tiff_reader import check_brightfield_rgb, main_series
from unipipe.slide.tiff_tiles import TiledPage, tiled_page_supported

__all__ = [
    "FAST_TILE_VENDORS",
    "OpenSlideSlide",
    "dicom_jfif_labelled_rgb",
    "open_with_openslide",
]

# Vendors whose levels are plain tiled TIFF pages; their JPEG tiles are read directly
# (tests/slide check the pixels against OpenSlide's).
FAST_TILE_VENDORS = ("aperio", "generic-tiff")
_JPEG = 7

logger = logging.getLogger(__name__)


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide; ``read_region`` at level 0 equals OpenSlide's pixels."""

    reader = "openslide"

    def __init__(
        self,
        handle: openslide.OpenSlide,
        *,
        slide_id: str,
        path: Path,
        mpp: float,
        fast_tiles: bool = True,
    ) -> None:
        super().__init__(slide_id=slide_id, path=path, mpp=mpp)
        self._handle = handle
        self.vendor = handle.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        self._tif: tifffile.TiffFile | None = None
        self._tiles: dict[int, TiledPage] = {}
        if fast_tiles and self.vendor in FAST_TILE_VENDORS:
            self._map_tiled_levels()
        self._ycbcr_as_rgb = self.vendor == "dicom" and dicom_jfif_labelled_rgb(path)
        if self._ycbcr_as_rgb:
            logger.warning(
                "slide %s: DICOM says RGB but its JPEG frames are JFIF (YCbCr); OpenSlide "
                "returns them unconverted, so unipipe converts YCbCr to RGB after reading",
                slide_id,
            )

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(w, h) of every pyramid level, finest first."""
        return tuple(self._handle.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per level pixel, for every level."""
        return tuple(float(d) for d in self._handle.level_downsamples)

    @property
    def fast_levels(self) -> tuple[int, ...]:
        """Levels whose tiles are decoded directly instead of through OpenSlide."""
        return tuple(sorted(self._tiles))

    def _map_tiled_levels(self) -> None:
        """Find the JPEG-tiled TIFF page of each level (same size), for direct tile reads."""
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, OSError, ValueError):
            return
        pages = [p for p in self._tif.pages if p.is_tiled and p.compression == _JPEG]
        for level, size in enumerate(self.level_dimensions):
            match = [p for p in pages if (p.imagewidth, p.imagelength) == size]
            if len(match) == 1 and tiled_page_supported(match[0]):
                self._tiles[level] = TiledPage(self._tif, match[0])
        logger.debug("slide %s: direct tile reads for levels %s", self.slide_id, self.fast_levels)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        tiles = self._tiles.get(level)
        if tiles is not None:
            return tiles.read(x, y, w, h)
        # OpenSlide wants the top-left in level-0 pixels and the size in level pixels.
        downsample = self.level_downsamples[level]
        x0, y0 = round(x * downsample), round(y * downsample)
        rgba = np.asarray(self._handle.read_region((x0, y0), level, (w, h)))
        rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
        if self._ycbcr_as_rgb:
            # OpenCV's order is Y, Cr, Cb; the raw samples are Y, Cb, Cr (JFIF, full range).
            rgb = cv2.cvtColor(rgb[..., [0, 2, 1]], cv2.COLOR_YCrCb2RGB)
        alpha = rgba[..., 3]
        if alpha.min() == 0:
            rgb[alpha == 0] = 255  # transparent (no scanned data) reads as white glass
        return rgb

    def _tile_grid(self, level: int) -> TileGrid | None:
        tiles = self._tiles.get(level)
        return None if tiles is None else tiles.grid()

    def clear_cache(self) -> None:
        """Drop the decoded tiles of direct reads."""
        for tiles in self._tiles.values():
            tiles.clear()

    def close(self) -> None:
        """Close the OpenSlide handle (and the TIFF file of direct tile reads)."""
        self._tiles.clear()
        if self._tif is not None:
            self._tif.close()
        self._handle.close()


def open_with_openslide(
    path: Path, *, slide_id: str, mpp: float | None, fast_tiles: bool = True
) -> OpenSlideSlide:
    """Open ``path`` with OpenSlide or raise `ReaderRefusedError` saying why.

    ``fast_tiles`` decodes the JPEG tiles of Aperio and generic tiled TIFF levels directly
    (the same pixels as OpenSlide, several times faster); False reads all through OpenSlide.
    """
    try:
        handle = openslide.OpenSlide(path)
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
        raise ReaderRefusedError(f"OpenSlide: {err or type(err).__name__}") from err
    try:
        if handle.properties.get(openslide.PROPERTY_NAME_VENDOR) == "generic-tiff":
            # OpenSlide renders 16-bit grey and fluorescence TIFFs as RGB without complaint;
            # tissue detection would then silently find nothing.
            _refuse_non_brightfield_tiff(path, slide_id=slide_id)
        metadata_mpp = _metadata_mpp(handle)
        level0_mpp = resolve_mpp(metadata_mpp, mpp, slide_id=slide_id, path=path)
    except Exception:
        handle.close()
        raise
    return OpenSlideSlide(
        handle, slide_id=slide_id, path=path, mpp=level0_mpp, fast_tiles=fast_tiles
    )


def _refuse_non_brightfield_tiff(path: Path, *, slide_id: str) -> None:
    """Raise UnsupportedSlideError unless the TIFF's main image is 8-bit RGB(A)."""
    with tifffile.TiffFile(path) as tif:
        check_brightfield_rgb(main_series(tif), slide_id=slide_id, path=path)


def _metadata_mpp(handle: openslide.OpenSlide) -> float | None:
    """Level-0 µm/px along x from OpenSlide's properties (y is logged when it differs)."""
    props = handle.properties
    try:
        mpp_x = float(props[openslide.PROPERTY_NAME_MPP_X])
    except (KeyError, ValueError):
        return None
    try:
        mpp_y = float(props[openslide.PROPERTY_NAME_MPP_Y])
        if abs(mpp_y / mpp_x - 1.0) > 0.01:
            logger.warning("non-square pixels (mpp x %s, y %s); using x", mpp_x, mpp_y)
    except (KeyError, ValueError, ZeroDivisionError):
        pass
    return plausible_mpp(mpp_x)


def dicom_jfif_labelled_rgb(path: Path) -> bool:
    """True when a DICOM file declares RGB but its first JPEG frame is a JFIF (YCbCr) stream.

    Google's early wsi2dcm wrote such files (resources' CMU-1-Small-Region-dicom);
    OpenSlide 4.0.1 trusts the header and returns the YCbCr samples as RGB.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
        if ds.get("PhotometricInterpretation") != "RGB":
            return False
        if ds.file_meta.TransferSyntaxUID != pydicom.uid.JPEGBaseline8Bit:
            return False
        frame = next(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    except (pydicom.errors.InvalidDicomError, AttributeError, KeyError, StopIteration, OSError):
        return False
    head = frame[:512]
    return b"JFIF\x00" in head and b"Adobe" not in head
