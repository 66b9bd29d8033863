"""Tests of lazy DICOM frame reads against pydicom's own frame splitting."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from unipipe.errors import UnsupportedSlideError
from unipipe.slide import open_slide
from unipipe.slide.dicom_frames import FrameFile

SMALL_DICOM = Path(__file__).resolve().parents[2] / "resources" / "slides" / "small_dicom.dcm"


def _dataset(path: Path, **kwargs) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, **kwargs)


def test_frame_file_matches_pydicom_frames():
    """Each lazily read frame has the bytes pydicom extracts from the whole Pixel Data."""
    full = _dataset(SMALL_DICOM)
    expected = list(generate_frames(full.PixelData, number_of_frames=int(full.NumberOfFrames)))
    with open(SMALL_DICOM, "rb") as fh:
        header = _dataset(fh, stop_before_pixels=True)
        offset = fh.tell()
    frames = FrameFile(SMALL_DICOM, header, offset)
    try:
        assert len(frames) == len(expected) == 42
        for index, data in enumerate(expected):
            assert frames.read(index) == data
    finally:
        frames.close()


# pydicom notes the file's header says RGB although the JPEG frames are JFIF (YCbCr).
@pytest.mark.filterwarnings("ignore:.*Photometric Interpretation:UserWarning")
def test_dicom_slide_decodes_like_pydicom():
    """A region of the slide equals the same frame decoded by pydicom (frame 0, top-left)."""
    from pydicom.pixels import pixel_array

    reference = pixel_array(_dataset(SMALL_DICOM), index=0)
    with open_slide(SMALL_DICOM) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 500, slide.mpp), reference)


def test_truncated_dicom_is_unsupported(tmp_path):
    """A file cut inside its Pixel Data is refused with a message saying why."""
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(SMALL_DICOM.read_bytes()[:400_000])
    with pytest.raises(UnsupportedSlideError, match="Pixel Data"):
        open_slide(cut, slide_id="cut")
