"""Pen and marker ink (green, blue, red, black) found by colour in HSV, cleaned by area."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import cv2
import numpy as np

from unipipe.curate.tissue_morph import remove_small_objects, square, um2_to_px
from unipipe.curate.tissue_views import ImageViews, as_views
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
        work_mpp: images finer than this are area-downsized by a whole factor to about
            this µm/px before the colour rules run (ink strokes are hundreds of µm wide),
            and the masks are scaled back; 0 keeps the input grid.
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
    work_mpp: float = 8.0

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
        for name in ("min_area_um2", "grow_um", "weak_hue_margin", "work_mpp"):
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


def pen_colour_masks(
    image: np.ndarray | ImageViews, *, mpp: float, params: PenParams
) -> dict[str, np.ndarray]:
    """Ink of each enabled colour, as bool masks on the image grid.

    Strong pixels of every colour are pooled and opened (3 x 3); pieces of the pool
    smaller than ``min_area_um2`` are dropped; each colour then grows up to ``grow_um``
    (Chebyshev distance: a square dilation, fast) into pixels that pass its relaxed rule.

    Args:
        image: (h, w, 3) uint8 RGB image (a thumbnail or a patch), or its `ImageViews`.
        mpp: µm per pixel of ``rgb``; sizes the area filter and the growth.
        params: the colour rules.
    """
    if not params.colours:
        return {}
    views = as_views(image)
    small, factor = _work_image(views, mpp, params)
    if factor > 1:
        masks = pen_colour_masks(small, mpp=mpp * factor, params=params)
        return {c: _upscale(m, views.shape, factor) for c, m in masks.items()}
    hsv = views.hsv
    strong = {colour: PEN_COLOURS[colour](hsv, params, False) for colour in params.colours}
    pooled = functools.reduce(cv2.bitwise_or, strong.values())
    pooled = cv2.morphologyEx(pooled, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    pooled = remove_small_objects(pooled, um2_to_px(params.min_area_um2, mpp))
    masks = {colour: (pixels > 0) & pooled for colour, pixels in strong.items()}
    if params.grow_um / mpp < 1 or not pooled.any():
        return masks

    # Hysteresis: grow each colour only into nearby pixels that still look like it. The
    # relaxed rules are evaluated on the bounding box of the neighbourhood only.
    near = cv2.dilate(pooled.astype(np.uint8), square(2 * params.grow_um, mpp))
    x, y, w, h = cv2.boundingRect(near)
    box = (slice(y, y + h), slice(x, x + w))
    near_box = near[box] > 0
    for colour, ink in masks.items():
        if ink.any():
            ink[box] |= near_box & (PEN_COLOURS[colour](hsv[box], params, True) > 0)
    return masks


def _work_image(views: ImageViews, mpp: float, params: PenParams) -> tuple[ImageViews, int]:
    """The image area-downsized by the whole factor that brings it near ``work_mpp``."""
    factor = int(params.work_mpp // mpp) if params.work_mpp > 0 else 1
    h, w = views.shape
    if factor < 2 or h < factor or w < factor:
        return views, 1
    # Crop to whole multiples so OpenCV takes its fast integer INTER_AREA path.
    crop = views.rgb[: h - h % factor, : w - w % factor]
    small = cv2.resize(crop, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return ImageViews(small), factor


def _upscale(mask: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Repeat each pixel of a work-grid mask ``factor`` times; pad the cropped edge."""
    h, w = shape
    small = mask.astype(np.uint8)
    big = cv2.resize(
        small, (small.shape[1] * factor, small.shape[0] * factor), interpolation=cv2.INTER_NEAREST
    )
    bottom, right = h - big.shape[0], w - big.shape[1]
    if bottom or right:
        big = cv2.copyMakeBorder(big, 0, bottom, 0, right, cv2.BORDER_REPLICATE)
    return big > 0


def detect_pen(image: np.ndarray | ImageViews, *, mpp: float, params: PenParams) -> np.ndarray:
    """Union of all enabled ink colours: (h, w) bool mask on the grid of ``image`` at ``mpp``."""
    views = as_views(image)
    small, factor = _work_image(views, mpp, params)
    masks = pen_colour_masks(small, mpp=mpp * factor, params=params)
    if not masks:
        return np.zeros(views.shape, bool)
    if factor > 1:
        return _upscale(np.logical_or.reduce(list(masks.values())), views.shape, factor)
    return np.logical_or.reduce(list(masks.values()))
