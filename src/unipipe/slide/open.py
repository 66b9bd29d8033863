"""`open_slide`: try each registered reader in turn and return the first that opens the file."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from unipipe.slide.base import Slide
from unipipe.slide.dicom_reader import open_with_pydicom
from unipipe.slide.messages import ReaderRefusedError, not_found, unsupported
from unipipe.slide.openslide_reader import open_with_openslide
from unipipe.slide.tiff_reader import open_with_tifffile

__all__ = ["READERS", "open_slide"]

logger = logging.getLogger(__name__)

Opener = Callable[..., Slide]

# Tried in order; a reader raises ReaderRefusedError to pass the file on.
READERS: dict[str, Opener] = {
    "openslide": open_with_openslide,
    "tifffile": open_with_tifffile,
    "pydicom": open_with_pydicom,
}


def open_slide(
    path: str | os.PathLike[str],
    *,
    slide_id: str | None = None,
    mpp: float | None = None,
    read_cache_bytes: int | None = None,
) -> Slide:
    """Open a whole-slide image with the first reader that accepts it.

    Args:
        path: the slide file; for a multi-file DICOM WSI any file of its folder, or the folder.
        slide_id: the manifest id, quoted in errors (default: the file name without suffixes).
        mpp: level-0 µm/px from the manifest; overrides the file's metadata.
        read_cache_bytes: budget of decoded tiles a batched read (`Slide.read_regions`) keeps;
            None: ``unipipe.slide.batch.READ_CACHE_BYTES``.

    Raises:
        SlideNotFoundError: ``path`` does not exist.
        UnsupportedSlideError: no reader can use it as a brightfield RGB slide.
        MissingMppError: neither the metadata nor ``mpp`` gives microns per pixel.
        ValueError: ``read_cache_bytes`` is not an int >= 0.
    """
    path = Path(path)
    slide_id = slide_id or path.name.split(".", 1)[0]
    if read_cache_bytes is not None and (
        isinstance(read_cache_bytes, bool)
        or not isinstance(read_cache_bytes, int)
        or read_cache_bytes < 0
    ):
        raise ValueError(f"read_cache_bytes must be an int >= 0, got {read_cache_bytes!r}")
    if not path.exists():
        raise not_found(slide_id, path)
    file_path = _dicom_folder_member(path, slide_id) if path.is_dir() else path

    refusals = []
    for name, opener in READERS.items():
        try:
            slide = opener(file_path, slide_id=slide_id, mpp=mpp)
        except ReaderRefusedError as err:
            refusals.append(str(err))
            continue
        if read_cache_bytes is not None:
            slide.read_cache_bytes = read_cache_bytes
        logger.info("opened %r", slide)
        logger.debug("reader %s opened %s", name, file_path)
        return slide
    raise unsupported(slide_id, path, "no reader opens it (" + "; ".join(refusals) + ")")


def _dicom_folder_member(folder: Path, slide_id: str) -> Path:
    """A file of a multi-file DICOM folder; OpenSlide finds the other levels from it."""
    members = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm")
    if not members:
        raise unsupported(slide_id, folder, "it is a folder without .dcm files")
    return members[0]
