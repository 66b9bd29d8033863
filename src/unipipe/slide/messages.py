"""Error messages that name the slide, its path and the fix, shared by every reader."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from unipipe.errors import MissingMppError, SlideNotFoundError, UnsupportedSlideError

__all__ = [
    "MANIFEST",
    "ReaderRefusedError",
    "missing_mpp",
    "not_found",
    "plausible_mpp",
    "resolve_mpp",
    "unsupported",
]

logger = logging.getLogger(__name__)

# The manifest is wherever `slides:` points; the default is named so users know the file.
MANIFEST = "the slide manifest (config/slides.tsv unless the config key `slides` names another)"

# Metadata mpp outside this range is a placeholder (e.g. a 96-dpi TIFF default), not a scan.
_PLAUSIBLE_MPP = (0.05, 100.0)


class ReaderRefusedError(Exception):
    """A reader cannot open this file; the next reader in the chain is tried."""


def _name(slide_id: str, path: Path) -> str:
    return f"slide {slide_id!r} ('{path}')"


def not_found(slide_id: str, path: Path) -> SlideNotFoundError:
    """The error for a manifest path that does not exist."""
    return SlideNotFoundError(
        f"{_name(slide_id, path)} does not exist; fix the `path` column of {MANIFEST} "
        "(relative paths are taken from the working directory)"
    )


def unsupported(slide_id: str, path: Path, why: str) -> UnsupportedSlideError:
    """The error for a file no reader can use as a brightfield RGB slide."""
    return UnsupportedSlideError(
        f"{_name(slide_id, path)} cannot be used: {why}. unipipe reads brightfield RGB slides "
        "(SVS, NDPI, MRXS, DICOM WSI, OME-TIFF, tiled TIFF); convert the file or remove its row "
        f"from {MANIFEST}"
    )


def missing_mpp(slide_id: str, path: Path) -> MissingMppError:
    """The error for a slide whose metadata holds no microns-per-pixel value."""
    return MissingMppError(
        f"{_name(slide_id, path)} has no microns-per-pixel metadata; add an `mpp` column to "
        f"{MANIFEST} with the scan's µm/px (about 0.25 at 40x, 0.5 at 20x)"
    )


def plausible_mpp(value: float | None) -> float | None:
    """``value`` if it is a finite mpp a scanner could have written, else None."""
    if value is None or not math.isfinite(value):
        return None
    low, high = _PLAUSIBLE_MPP
    return value if low <= value <= high else None


def resolve_mpp(
    metadata_mpp: float | None, override: float | None, *, slide_id: str, path: Path
) -> float:
    """Level-0 µm/px: the manifest override if given, else the metadata, else an error."""
    if override is not None:
        if not (math.isfinite(override) and override > 0):
            raise MissingMppError(
                f"{_name(slide_id, path)} has mpp {override!r} in {MANIFEST}; "
                "it must be a positive number of µm/px"
            )
        if metadata_mpp is not None and abs(override / metadata_mpp - 1.0) > 0.1:
            logger.warning(
                "slide %s: manifest mpp %s overrides metadata mpp %s",
                slide_id,
                override,
                metadata_mpp,
            )
        return float(override)
    if metadata_mpp is None:
        raise missing_mpp(slide_id, path)
    return float(metadata_mpp)
