"""pydicom backend: single-file DICOM whole-slide images that OpenSlide refuses."""

from __future__ import annotations

import functools
import logging
import math
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from unipipe.slide.base import Slide
from unipipe.slide.batch import TileGrid
from unipipe.slide.dicom_frames import FrameFile
from unipipe.slide.messages import ReaderRefusedError, plausible_mpp, resolve_mpp, unsupported

__all__ = ["DicomSlide", "dicom_mpp", "open_with_pydicom"]

logger = logging.getLogger(__name__)

_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage

# Decoded frames kept per slide; 64 frames of 500 x 500 RGB are 48 MB.
_FRAME_CACHE = 64


class DicomSlide(Slide):
    """A single-level DICOM WSI whose frames are read and decoded on demand.

    Frames are read from the file one at a time (`FrameFile`) and decoded with
    libjpeg-turbo, which converts JFIF (YCbCr) streams to RGB; decoded frames are cached.
    """

    reader = "pydicom"

    def __init__(self, ds: pydicom.Dataset, frames: FrameFile, **kwargs) -> None:
        super().__init__(**kwargs)
        self._width = int(ds.TotalPixelMatrixColumns)
        self._height = int(ds.TotalPixelMatrixRows)
        self._frame_w, self._frame_h = int(ds.Columns), int(ds.Rows)
        self._grid_cols = math.ceil(self._width / self._frame_w)
        self._grid_rows = math.ceil(self._height / self._frame_h)
        self._frame_index = _frame_positions(ds, self._grid_cols, self._grid_rows)
        self._frames = frames
        self._compressed = ds.file_meta.TransferSyntaxUID.is_compressed
        self._decode = functools.lru_cache(maxsize=_FRAME_CACHE)(self._decode_frame)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(w, h) of the total pixel matrix; the reader exposes one level."""
        return ((self._width, self._height),)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """One level at downsample 1."""
        return (1.0,)

    def _decode_frame(self, index: int) -> np.ndarray:
        data = self._frames.read(index)
        if self._compressed:
            return imagecodecs.jpeg8_decode(data)[..., :3]
        return np.frombuffer(data, np.uint8).reshape(self._frame_h, self._frame_w, 3)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, 3), np.uint8)
        fw, fh = self._frame_w, self._frame_h
        for row in range(y // fh, (y + h - 1) // fh + 1):
            for col in range(x // fw, (x + w - 1) // fw + 1):
                frame = self._decode(self._frame_index[row, col])
                # Overlap of the request with this frame, in total-matrix pixels.
                x0, y0 = max(x, col * fw), max(y, row * fh)
                x1, y1 = min(x + w, (col + 1) * fw), min(y + h, (row + 1) * fh)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = frame[
                    y0 - row * fh : y1 - row * fh, x0 - col * fw : x1 - col * fw
                ]
        return out

    def _tile_grid(self, level: int) -> TileGrid:
        def decode(index: int) -> np.ndarray:
            row, col = divmod(index, self._grid_cols)
            return self._decode_frame(int(self._frame_index[row, col]))

        return TileGrid(self._width, self._height, self._frame_w, self._frame_h, decode)

    def clear_cache(self) -> None:
        """Drop the decoded frames."""
        self._decode.cache_clear()

    def close(self) -> None:
        """Drop the frame cache and close the file."""
        self._decode.cache_clear()
        self._frames.close()


def open_with_pydicom(path: Path, *, slide_id: str, mpp: float | None) -> DicomSlide:
    """Open a single-file DICOM WSI, or raise `ReaderRefusedError` (not DICOM) or
    `UnsupportedSlideError` (DICOM, but not an 8-bit RGB whole-slide image)."""
    try:
        with warnings.catch_warnings(), open(path, "rb") as fh:
            warnings.simplefilter("ignore")  # over-long UIDs/names in real files are harmless
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            pixel_data_offset = fh.tell()
    except (InvalidDicomError, OSError, ValueError) as err:
        raise ReaderRefusedError(f"pydicom: {err}") from err
    _check_wsi_rgb(ds, slide_id=slide_id, path=path)
    level0_mpp = resolve_mpp(dicom_mpp(ds), mpp, slide_id=slide_id, path=path)
    try:
        frames = FrameFile(path, ds, pixel_data_offset)
    except ValueError as err:
        why = f"its Pixel Data cannot be split into frames ({err})"
        raise unsupported(slide_id, path, why) from err
    return DicomSlide(ds, frames, slide_id=slide_id, path=path, mpp=level0_mpp)


def _check_wsi_rgb(ds: pydicom.Dataset, *, slide_id: str, path: Path) -> None:
    """Raise `UnsupportedSlideError` unless ``ds`` is an 8-bit 3-sample tiled WSI."""
    if ds.get("SOPClassUID") != _WSI_SOP_CLASS or "TotalPixelMatrixColumns" not in ds:
        raise unsupported(slide_id, path, "it is DICOM but not a VL Whole Slide Microscopy image")
    samples, bits = int(ds.get("SamplesPerPixel", 0)), int(ds.get("BitsAllocated", 0))
    if samples != 3 or bits != 8:
        raise unsupported(
            slide_id, path, f"it has {samples} sample(s) of {bits} bits per pixel, not 8-bit RGB"
        )
    if int(ds.get("PlanarConfiguration", 0)) != 0:
        raise unsupported(slide_id, path, "its colour planes are stored separately")
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed and syntax != pydicom.uid.JPEGBaseline8Bit:
        raise unsupported(slide_id, path, f"its transfer syntax {syntax.name} is not JPEG baseline")


def dicom_mpp(ds: pydicom.Dataset) -> float | None:
    """Level-0 µm/px from PixelSpacing (mm) or, failing that, ImagedVolumeWidth / columns."""
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            spacing = ds[group][0].PixelMeasuresSequence[0].PixelSpacing
            return plausible_mpp(float(spacing[1]) * 1000.0)  # (row, column) spacing in mm
        except (KeyError, AttributeError, IndexError):
            continue
    width_mm = ds.get("ImagedVolumeWidth")
    if width_mm:
        return plausible_mpp(float(width_mm) * 1000.0 / int(ds.TotalPixelMatrixColumns))
    return None


def _frame_positions(ds: pydicom.Dataset, grid_cols: int, grid_rows: int) -> np.ndarray:
    """(grid_rows, grid_cols) array mapping each frame slot to its frame index.

    Explicit PlanePositionSlide positions win. Without them, DICOM's TILED_FULL is
    row-major; files that declare no DimensionOrganizationType (as pathml writes
    them, with ImageOrientationSlide 0,-1,0,-1,0,0) store frames column by column.
    """
    n_frames = int(ds.get("NumberOfFrames", 1))
    if n_frames != grid_cols * grid_rows:
        raise ReaderRefusedError(
            f"pydicom: {n_frames} frames do not tile a {grid_cols} x {grid_rows} grid"
        )
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and "PlanePositionSlideSequence" in per_frame[0]:
        index = np.empty((grid_rows, grid_cols), np.int64)
        fw, fh = int(ds.Columns), int(ds.Rows)
        for i, item in enumerate(per_frame):
            position = item.PlanePositionSlideSequence[0]
            col = (int(position.ColumnPositionInTotalImagePixelMatrix) - 1) // fw
            row = (int(position.RowPositionInTotalImagePixelMatrix) - 1) // fh
            index[row, col] = i
        return index
    frames = np.arange(n_frames)
    if ds.get("DimensionOrganizationType") == "TILED_FULL":
        return frames.reshape(grid_rows, grid_cols)
    logger.info("%s: no DimensionOrganizationType; reading frames column-major", ds.filename)
    return frames.reshape(grid_cols, grid_rows).T
