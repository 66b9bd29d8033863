"""Out-of-focus patches: variance of the Laplacian of a patch read at the target mpp."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from unipipe.errors import ConfigError

__all__ = ["BlurParams", "blur_score", "is_blurred"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlurParams:
    """Blur threshold (config ``curate.artefacts.blur``); tiling applies it per tile.

    On 256-px patches at 0.5 mpp of the bundled slides, sharp tissue scores 700-3300 and
    the same patches after a Gaussian blur of sigma 1.5 px score 30-100.

    Attributes:
        min_score: patches scoring below this are out of focus (grey levels squared).
            The value to use for ``curate.tiling.min_blur_score``.
    """

    min_score: float = 150.0

    def __post_init__(self) -> None:
        if self.min_score < 0:
            raise ConfigError("curate.artefacts.blur.min_score must be >= 0")


def blur_score(patch: np.ndarray) -> float:
    """Variance of the Laplacian of the grey patch; low means blurred.

    Args:
        patch: (h, w, 3) uint8 RGB (or (h, w) grey) pixels, read at the tile's target mpp
            so that scores of different slides compare.
    """
    grey = patch if patch.ndim == 2 else cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F, ksize=1).var())


def is_blurred(patch: np.ndarray, params: BlurParams) -> bool:
    """True when `blur_score` of ``patch`` is below ``params.min_score``."""
    return blur_score(patch) < params.min_score
