"""Error messages that name the slide, its path and the fix, shared by every reader."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from unipipe.errors import MissingMppError, SlideError, SlideNotFoundError, UnsupportedSlideError

__all__ = [
    "MANIFEST",
    "ReaderRefusedError",
    "missing_mpp",
    "not_found",
    "plausible_mpp",
    "in_slide_task",
    "resolve_mpp",
    "unsupported",
]

logger = logging.getLogger(__name__)

# The manifest is wherever `slides:` points; the default is named so users know the file.
MANIFEST = "the slide manifest (config/slides.tsv unless the config key `slides` names another)"

# Metadata mpp outside this range is a placeholder (e.g. a 96-dpi TIFF default), not a scan.
_PLAUSIBLE_MPP = (0.05, 100.0)


# How a slide task's manifest differs from the slide manifest, as the messages word it.
_SLIDE_TASK_WORDING = (
    ("the `path` column of", "the `slide_path` column of"),
    ("(relative paths are taken from the working directory)",
     "(relative paths are taken from the CSV's folder)"),
)  # fmt: skip


def in_slide_task(err: SlideError, manifest_csv: str | os.PathLike[str] | None) -> SlideError:
    """The same error, pointing at a slide task's slides.csv instead of the slide manifest.

    The readers word their fixes for config/slides.tsv; a WSI of a slide task is listed in
    that task's slides.csv, which is where its row has to be fixed or removed.

    Args:
        err: an error raised while opening or reading a slide-task WSI.
        manifest_csv: the task's slides.csv (None: named as "the slide task's slides.csv").

    Returns:
        An error of the same class whose message names ``manifest_csv``.
    """
    where = (f"the slide task's manifest {os.fspath(manifest_csv)}" if manifest_csv
             else "the slide task's slides.csv")  # fmt: skip
    text = str(err).replace(MANIFEST, where).replace("the slide manifest", where)
    for old, new in _SLIDE_TASK_WORDING:
        text = text.replace(old, new)
    return type(err)(text)


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
