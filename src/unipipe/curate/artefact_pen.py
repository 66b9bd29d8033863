"""Pen and marker ink (green, blue, red, black) found by colour in HSV, cleaned by area."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import cv2
import numpy as np

from unipipe.curate.tissue_morph import remove_small_objects, um2_to_px, within
from unipipe.errors import ConfigError

__all__ = ["PEN_COLOURS", "PenParams", "detect_pen", "pen_colour_masks"]

# OpenCV HSV: hue 0-179 (degrees / 2), saturation and value 0-255.
_HUE_MAX = 180
# Haematoxylin and eosin hues; "black" ink must lie outside this purple-pink band.
_H_AND_E_HUE = (110, 171)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PenParams:
    """Colour rules for ink, measured on HistoQC's pen ground truth and the bundled slides.

    Hues are OpenCV degrees/2 (0-179), inclusive ranges; a range whose start exceeds
    its end wraps through 0 (red). Saturation and value are 0-255.

    Attributes:
        colours: which ink colours to look for.
        green_hue, green_min_saturation: green/teal marker.
        blue_hue, blue_min_saturation: blue marker (haematoxylin stays below 100 saturation
            at these hues on the IHC demo slide).
        red_hue, red_min_saturation: red marker; eosin has hue <= 171 or saturation < 110.
        black_max_value: black/brown ink is darker than this and not H&E-coloured.
        min_area_um2: ink blobs smaller than this (µm²) are dropped (nuclei, DAB dots).
        grow_um: ink then grows up to this far (µm) into pixels that pass relaxed rules
            (hue range widened by ``weak_hue_margin``, saturation limits times
            ``weak_saturation_factor``, black limit plus 30): the pale fringe of a stroke.
    """

    colours: tuple[str, ...] = ("green", "blue", "red", "black")
    green_hue: tuple[int, int] = (75, 100)
    green_min_saturation: int = 50
    blue_hue: tuple[int, int] = (100, 122)
    blue_min_saturation: int = 100
    red_hue: tuple[int, int] = (172, 8)
    red_min_saturation: int = 110
    black_max_value: int = 100
    min_area_um2: float = 5000.0
    grow_um: float = 60.0
    weak_hue_margin: int = 4
    weak_saturation_factor: float = 0.8

    def __post_init__(self) -> None:
        object.__setattr__(self, "colours", tuple(self.colours))
        unknown = sorted(set(self.colours) - set(PEN_COLOURS))
        if unknown:
            raise ConfigError(
                f"curate.artefacts.pen.colours has unknown colour(s) {unknown}; "
                f"choose from {sorted(PEN_COLOURS)}"
            )
        for name in ("green_hue", "blue_hue", "red_hue"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2 or not all(0 <= v < _HUE_MAX for v in value):
                raise ConfigError(
                    f"curate.artefacts.pen.{name} must be two hues in 0..179, got {value!r}"
                )
            object.__setattr__(self, name, value)
        for name in (
            "green_min_saturation",
            "blue_min_saturation",
            "red_min_saturation",
            "black_max_value",
        ):
            if not 0 <= getattr(self, name) <= 255:
                raise ConfigError(f"curate.artefacts.pen.{name} must be in 0..255")
        for name in ("min_area_um2", "grow_um", "weak_hue_margin"):
            if getattr(self, name) < 0:
                raise ConfigError(f"curate.artefacts.pen.{name} must be >= 0")
        if not 0 < self.weak_saturation_factor <= 1:
            raise ConfigError("curate.artefacts.pen.weak_saturation_factor must be in (0, 1]")


def _hue_ranges(bounds: tuple[int, int], margin: int) -> list[tuple[int, int]]:
    """Inclusive hue ranges of ``bounds`` widened by ``margin``, split where they wrap past 0."""
    low, high = bounds[0] - margin, bounds[1] + margin
    if bounds[0] > bounds[1]:  # wraps through 0 (red)
        return [(low % _HUE_MAX, _HUE_MAX - 1), (0, high % _HUE_MAX)]
    if low < 0:
        return [(low % _HUE_MAX, _HUE_MAX - 1), (0, high)]
    if high >= _HUE_MAX:
        return [(low, _HUE_MAX - 1), (0, high % _HUE_MAX)]
    return [(low, high)]


def _in_hsv(hsv: np.ndarray, hue: tuple[int, int], s_min: float, v_max: int, margin: int = 0):
    """uint8 0/255 mask of pixels with hue in range, saturation >= s_min and value <= v_max."""
    out = None
    for low, high in _hue_ranges(hue, margin):
        part = cv2.inRange(hsv, (low, int(np.ceil(s_min)), 0), (high, 255, v_max))
        out = part if out is None else cv2.bitwise_or(out, part)
    return out


def _coloured(hsv: np.ndarray, hue: tuple[int, int], min_sat: int, p: PenParams, weak: bool):
    margin = p.weak_hue_margin if weak else 0
    factor = p.weak_saturation_factor if weak else 1.0
    return _in_hsv(hsv, hue, min_sat * factor, 255, margin)


def _green(hsv: np.ndarray, p: PenParams, weak: bool) -> np.ndarray:
    return _coloured(hsv, p.green_hue, p.green_min_saturation, p, weak)


def _blue(hsv: np.ndarray, p: PenParams, weak: bool) -> np.ndarray:
    return _coloured(hsv, p.blue_hue, p.blue_min_saturation, p, weak)


def _red(hsv: np.ndarray, p: PenParams, weak: bool) -> np.ndarray:
    return _coloured(hsv, p.red_hue, p.red_min_saturation, p, weak)


def _black(hsv: np.ndarray, p: PenParams, weak: bool) -> np.ndarray:
    limit = min(255, p.black_max_value + (30 if weak else 0))
    dark = _in_hsv(hsv, (0, _HUE_MAX - 1), 0, limit)
    stain = _in_hsv(hsv, _H_AND_E_HUE, 0, limit)
    return cv2.bitwise_and(dark, cv2.bitwise_not(stain))


# Colour name -> rule giving a uint8 0/255 mask from an (h, w, 3) uint8 HSV image
# (weak=True: the relaxed rule used to grow ink into its pale fringe).
PEN_COLOURS: dict[str, Callable[[np.ndarray, PenParams, bool], np.ndarray]] = {
    "green": _green,
    "blue": _blue,
    "red": _red,
    "black": _black,
}


def pen_colour_masks(rgb: np.ndarray, *, mpp: float, params: PenParams) -> dict[str, np.ndarray]:
    """Ink of each enabled colour, as bool masks on the image grid.

    Strong pixels of every colour are pooled and opened (3 x 3); pieces of the pool
    smaller than ``min_area_um2`` are dropped; each colour then grows up to ``grow_um``
    into pixels that pass its relaxed rule.

    Args:
        rgb: (h, w, 3) uint8 RGB image (a thumbnail or a patch).
        mpp: µm per pixel of ``rgb``; sizes the area filter and the growth.
        params: the colour rules.
    """
    if not params.colours:
        return {}
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    strong = {colour: PEN_COLOURS[colour](hsv, params, False) for colour in params.colours}
    pooled = functools.reduce(cv2.bitwise_or, strong.values())
    pooled = cv2.morphologyEx(pooled, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    pooled = remove_small_objects(pooled, um2_to_px(params.min_area_um2, mpp))
    if not pooled.any():
        return {colour: pooled.copy() for colour in strong}

    grow_px = params.grow_um / mpp
    near = within(pooled, grow_px) if grow_px >= 1 else pooled
    masks = {}
    for colour, pixels in strong.items():
        ink = (pixels > 0) & pooled
        if grow_px >= 1 and ink.any():
            # Hysteresis: grow only into pixels that still look like this ink.
            ink |= near & (PEN_COLOURS[colour](hsv, params, True) > 0)
        masks[colour] = ink
    return masks


def detect_pen(rgb: np.ndarray, *, mpp: float, params: PenParams) -> np.ndarray:
    """Union of all enabled ink colours: (h, w) bool mask on the grid of ``rgb`` at ``mpp``."""
    masks = pen_colour_masks(rgb, mpp=mpp, params=params)
    if not masks:
        return np.zeros(rgb.shape[:2], bool)
    return np.logical_or.reduce(list(masks.values()))
