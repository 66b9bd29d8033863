"""The reader-independent `Slide`: mpp-based region and thumbnail reads over a level pyramid."""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import cv2
import numpy as np

from unipipe.errors import SlideReadError, UnipipeError
from unipipe.slide.batch import READ_CACHE_BYTES, BatchStats, TileGrid, read_boxes

__all__ = ["LEVEL_MPP_TOLERANCE", "READ_CACHE_BYTES", "THUMBNAIL_BLOCK_PX", "Slide", "as_size"]

logger = logging.getLogger(__name__)

# A level whose mpp is within 1% of the requested mpp is read without resizing
# (DICOM pyramids store 0.998 µm/px for a nominal 1.0).
LEVEL_MPP_TOLERANCE = 0.01

# Largest side, in source-level pixels, of one block read while building a
# thumbnail; bounds memory to about 3 * THUMBNAIL_BLOCK_PX**2 bytes per block.
THUMBNAIL_BLOCK_PX = 4096

_BACKGROUND = 255  # outside the slide is white glass


def as_size(size_px: int | tuple[int, int]) -> tuple[int, int]:
    """Turn ``size_px`` (one int for a square, or (w, h)) into a (w, h) tuple of positive ints."""
    if isinstance(size_px, int | np.integer):
        w = h = int(size_px)
    else:
        w, h = (int(v) for v in size_px)
    if w <= 0 or h <= 0:
        raise ValueError(f"size_px must be positive, got {size_px!r}")
    return w, h


@dataclasses.dataclass(frozen=True)
class _RegionPlan:
    """How every patch of one (size, mpp) is read: the level box to read, then the resize.

    ``read_w`` x ``read_h`` level pixels are read at the patch's level-0 origin divided by
    ``downsample``; ``resize`` then turns them into ``out_w`` x ``out_h`` (for "box_warp",
    an integer box average by ``k`` and a bilinear warp mapping the ``lw`` x ``lh`` box).
    """

    level: int
    downsample: float
    out_w: int
    out_h: int
    read_w: int
    read_h: int
    resize: Literal["copy", "bilinear", "area", "box_warp"]
    k: int = 1
    lw: int = 0
    lh: int = 0

    def box(self, x: int, y: int) -> tuple[int, int, int, int]:
        """(x, y, w, h) in level pixels to read for the patch at level-0 (x, y)."""
        return round(x / self.downsample), round(y / self.downsample), self.read_w, self.read_h

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        """The output patch from the level pixels of `box`."""
        size = (self.out_w, self.out_h)
        if self.resize == "copy":
            return pixels
        if self.resize == "bilinear":
            return cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
        if self.resize == "area":
            return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        # Large factors: an integer box average (OpenCV's fast INTER_AREA path), then a
        # bilinear warp for the remaining factor below 2 that maps the lw x lh box exactly.
        k = self.k
        boxed = cv2.resize(
            pixels, (pixels.shape[1] // k, pixels.shape[0] // k), interpolation=cv2.INTER_AREA
        )
        sx, sy = self.out_w * k / self.lw, self.out_h * k / self.lh
        warp = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
        return cv2.warpAffine(
            boxed, warp, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )


def _finish_crop(plan: _RegionPlan, pixels: np.ndarray) -> np.ndarray:
    """``plan``'s patch from a source box that may be larger than its own (same top-left).

    The source buffer may be reused by the next box, so even a 1:1 read is copied out.
    """
    crop = pixels[: plan.read_h, : plan.read_w]
    return crop.copy() if plan.resize == "copy" else plan.finish(crop)


class Slide(abc.ABC):
    """A whole-slide image addressed in level-0 pixels and microns per pixel.

    Subclasses describe their pyramid (``level_dimensions``, ``level_downsamples``)
    and implement one hook, `_read_level`, that returns RGB pixels of a box lying
    inside one level. Everything mpp-related (level choice, resizing, padding,
    block-wise thumbnails) lives here, so every reader behaves the same.

    Attributes:
        slide_id: the manifest id, quoted in every error message.
        path: the file that was opened.
        mpp: level-0 microns per pixel (metadata, or the manifest override).
        reader: name of the backend that opened the file ("openslide", "tifffile", "pydicom").
        read_cache_bytes: default tile budget of `read_regions` (set by `open_slide`).
    """

    reader: str = "abstract"

    def __init__(self, *, slide_id: str, path: Path, mpp: float) -> None:
        self.slide_id = slide_id
        self.path = path
        self.mpp = float(mpp)
        self.read_cache_bytes = READ_CACHE_BYTES

    # -- pyramid description, provided by the backend -------------------------------------------

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(w, h) of every pyramid level, finest first."""

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per level pixel, for every level (1.0 first)."""

    @abc.abstractmethod
    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Return (h, w, 3) uint8 RGB of the box at (x, y) in *level* pixels, inside the level."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file handles."""

    def clear_cache(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Drop decoded tiles or frames kept for later reads (readers that keep none: no-op)."""

    # -- public API ------------------------------------------------------------------------------

    @property
    def dimensions(self) -> tuple[int, int]:
        """(w, h) of level 0 in pixels."""
        return self.level_dimensions[0]

    @property
    def level_mpps(self) -> tuple[float, ...]:
        """Microns per pixel of every level."""
        return tuple(self.mpp * ds for ds in self.level_downsamples)

    def best_level(self, mpp: float) -> int:
        """The coarsest level that is still at least as fine as ``mpp`` (µm/px), within 1%.

        Reading from it and downsizing loses nothing against reading level 0; when
        ``mpp`` is finer than level 0, level 0 is returned (and the read upsamples).
        """
        limit = mpp * (1.0 + LEVEL_MPP_TOLERANCE)
        candidates = [i for i, level_mpp in enumerate(self.level_mpps) if level_mpp <= limit]
        if not candidates:
            return 0
        return max(candidates, key=lambda i: self.level_downsamples[i])

    def read_region(self, x: int, y: int, size_px: int | tuple[int, int], mpp: float) -> np.ndarray:
        """Read ``size_px`` pixels at ``mpp`` µm/px whose top-left is (x, y) in level-0 pixels.

        The box covers ``size_px * mpp / self.mpp`` level-0 pixels. It is read from
        `best_level` and resized with area averaging (antialiased): for factors of 2 or
        more an integer box average followed by a bilinear warp for the rest, which is
        ten times faster than OpenCV's fractional INTER_AREA and within ~2 grey levels of
        it. Upsampling is bilinear. Parts outside the slide are white.

        Returns:
            (h, w, 3) uint8 RGB array.
        """
        plan = self._plan(size_px, mpp)
        level, (bx, by, bw, bh) = plan.level, plan.box(x, y)
        return plan.finish(self._read_padded(level, bx, by, bw, bh))

    def read_regions(
        self,
        origins: Sequence[tuple[int, int]] | np.ndarray,
        size_px: int | tuple[int, int],
        mpp: float,
        *,
        cache_bytes: int | None = None,
        stats: BatchStats | None = None,
    ) -> Iterator[np.ndarray]:
        """Read many patches of one geometry, decoding each stored tile once for the batch.

        Gives exactly what ``read_region(x, y, size_px, mpp)`` returns for each (x, y) of
        ``origins`` (level-0 top-left pixels), in the order given. Where the chosen level is
        a grid of tiles this reader can decode one by one (tiled TIFF pages, DICOM frames),
        the reads are planned over the whole batch (`unipipe.slide.batch.read_boxes`): a
        tile is decoded once if the tiles alive at the same time fit ``cache_bytes``, which
        for a row-major grid is about one row of tiles; row-major order (as tiles.parquet
        lists them) is therefore the cheap order. Other levels are read box by box.

        Args:
            origins: (x, y) level-0 top-left of each patch; an (n, 2) array also works.
            size_px: output side (or (w, h)) in pixels.
            mpp: output µm/px.
            cache_bytes: most bytes of decoded tiles kept for later patches (None: the
                slide's ``read_cache_bytes``); memory is this plus one tile, one patch and
                the plan (a few integers per patch).
            stats: filled in with tiles touched and decoded (direct tile levels only).

        Returns:
            A lazy iterator of (h, w, 3) uint8 RGB arrays, one per origin; a damaged tile
            raises `SlideReadError` (naming slide and box) when its patch is reached.
        """
        plan = self._plan(size_px, mpp)  # bad sizes fail here, not at the first patch
        level = plan.level
        boxes = [plan.box(int(x), int(y)) for x, y in np.asarray(origins).reshape(-1, 2)]
        grid = self._tile_grid(level)
        if grid is None:
            return (plan.finish(self._read_padded(level, *box)) for box in boxes)

        def error(box: tuple[int, int, int, int], err: Exception) -> Exception:
            if isinstance(err, UnipipeError | MemoryError):
                return err
            return self._decode_error(level, *box, err)

        budget = self.read_cache_bytes if cache_bytes is None else cache_bytes
        pixels = read_boxes(
            grid,
            boxes,
            cache_bytes=budget,
            stats=stats,
            on_error=error,
            reuse_output=plan.resize != "copy",  # finish() copies into a new array
        )
        return (plan.finish(p) for p in pixels)

    def read_regions_multi(
        self,
        origins: Sequence[tuple[int, int]] | np.ndarray,
        geometries: Sequence[tuple[int | tuple[int, int], float]],
        *,
        wanted: np.ndarray | None = None,
        cache_bytes: int | None = None,
    ) -> Iterator[tuple[np.ndarray | None, ...]]:
        """Read every origin at several (size_px, mpp) geometries from one read of its pixels.

        Gives, per origin, the tuple of what ``read_region(x, y, size_px, mpp)`` returns for
        each geometry, pixel for pixel. Geometries with the same `best_level` share one
        source box per origin (same top-left, large enough for each geometry it wants),
        read in one batch as `read_regions` reads and resized once per geometry: a tile's
        patch at its target mpp and a smaller one for cheap features come from one decode
        of its tiles, and so do tiles of several sizes listed together in row-major order.
        Geometries on different levels each get a batched read of their level, in step.

        Args:
            origins: (x, y) level-0 top-left of each patch; an (n, 2) array also works.
            geometries: (size_px, mpp) pairs, as `read_region` takes them.
            wanted: (n, len(geometries)) bool, which geometries each origin needs (None:
                all); a geometry not wanted comes back as None and costs nothing.
            cache_bytes: tile budget of each level's batched read (None: the slide's
                ``read_cache_bytes``).

        Returns:
            A lazy iterator with one tuple of (h, w, 3) uint8 RGB arrays (or None) per
            origin, in the order of ``geometries``.
        """
        plans = [self._plan(size_px, mpp) for size_px, mpp in geometries]  # fail early
        points = np.asarray(origins).reshape(-1, 2)
        if wanted is None:
            wanted = np.ones((len(points), len(plans)), bool)
        wanted = np.asarray(wanted, bool)
        if wanted.shape != (len(points), len(plans)):
            raise ValueError(
                f"wanted must be (origins, geometries) = {(len(points), len(plans))}, "
                f"got {wanted.shape}"
            )
        budget = self.read_cache_bytes if cache_bytes is None else cache_bytes
        levels = sorted({plan.level for plan in plans})
        on_level = [[j for j, plan in enumerate(plans) if plan.level == lv] for lv in levels]
        streams = []
        for level, members in zip(levels, on_level, strict=True):
            # Per origin, the smallest box holding every wanted member; one level, one
            # downsample, so every member's box starts at the same level pixel.
            read_w = np.where(wanted[:, members], [plans[j].read_w for j in members], 0).max(1)
            read_h = np.where(wanted[:, members], [plans[j].read_h for j in members], 0).max(1)
            first = plans[members[0]]
            boxes = [
                (*first.box(int(x), int(y))[:2], int(w), int(h))
                for (x, y), w, h in zip(points, read_w, read_h, strict=True)
                if w
            ]
            streams.append(self._read_level_boxes(level, boxes, budget))

        def patches() -> Iterator[tuple[np.ndarray | None, ...]]:
            out: list[np.ndarray | None] = [None] * len(plans)
            for row in wanted:
                out[:] = [None] * len(plans)
                for stream, members in zip(streams, on_level, strict=True):
                    if not row[members].any():
                        continue
                    pixels = next(stream)
                    for j in members:
                        if row[j]:
                            out[j] = _finish_crop(plans[j], pixels)
                yield tuple(out)

        return patches()

    def _read_level_boxes(
        self, level: int, boxes: list[tuple[int, int, int, int]], cache_bytes: int
    ) -> Iterator[np.ndarray]:
        """Pixels of level boxes in order; batched over the tile grid where there is one.

        Where batched, each yielded array is overwritten by the next one.
        """
        grid = self._tile_grid(level)
        if grid is None:
            return (self._read_padded(level, *box) for box in boxes)

        def error(box: tuple[int, int, int, int], err: Exception) -> Exception:
            if isinstance(err, UnipipeError | MemoryError):
                return err
            return self._decode_error(level, *box, err)

        return read_boxes(grid, boxes, cache_bytes=cache_bytes, on_error=error, reuse_output=True)

    def _tile_grid(self, level: int) -> TileGrid | None:
        """The tiles of ``level`` for batched reads, or None to read it box by box (default)."""
        return None

    def _plan(self, size_px: int | tuple[int, int], mpp: float) -> _RegionPlan:
        """Level, source box size and resize steps shared by every patch of one geometry."""
        out_w, out_h = as_size(size_px)
        if not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp!r}")
        level = self.best_level(mpp)
        downsample = self.level_downsamples[level]
        scale = mpp / (self.mpp * downsample)  # level pixels per output pixel
        if abs(scale - 1.0) <= LEVEL_MPP_TOLERANCE:  # read 1:1, pixel-exact
            return _RegionPlan(level, downsample, out_w, out_h, out_w, out_h, "copy")
        lw = max(1, round(out_w * scale))
        lh = max(1, round(out_h * scale))
        if scale < 1.0:
            return _RegionPlan(level, downsample, out_w, out_h, lw, lh, "bilinear")
        if scale < 2.0:
            return _RegionPlan(level, downsample, out_w, out_h, lw, lh, "area")
        k = math.floor(scale)
        return _RegionPlan(
            level, downsample, out_w, out_h, k * math.ceil(lw / k), k * math.ceil(lh / k),
            "box_warp", k=k, lw=lw, lh=lh,
        )  # fmt: skip

    def thumbnail_size(self, mpp: float) -> tuple[int, int]:
        """(w, h) of the whole slide rendered at ``mpp`` µm/px (at least 1 x 1)."""
        w0, h0 = self.dimensions
        factor = self.mpp / mpp
        return max(1, round(w0 * factor)), max(1, round(h0 * factor))

    def read_thumbnail(self, mpp: float) -> np.ndarray:
        """Render the whole slide at ``mpp`` µm/px, reading it in bounded blocks.

        Output pixel (i, j) covers level-0 pixels [j * s, (j + 1) * s) x [i * s, (i + 1) * s)
        with s = mpp / self.mpp. Memory stays bounded on single-level slides because
        the source is read in blocks of at most `THUMBNAIL_BLOCK_PX` level pixels a side.

        Returns:
            (h, w, 3) uint8 RGB array of size `thumbnail_size`.
        """
        out_w, out_h = self.thumbnail_size(mpp)
        level = self.best_level(mpp)
        scale = mpp / self.level_mpps[level]  # level pixels per output pixel
        block = max(16, math.floor(THUMBNAIL_BLOCK_PX / max(scale, 1.0)))  # output px per block
        step0 = mpp / self.mpp  # level-0 px per output px

        thumb = np.empty((out_h, out_w, 3), np.uint8)
        for top in range(0, out_h, block):
            for left in range(0, out_w, block):
                bw, bh = min(block, out_w - left), min(block, out_h - top)
                x0, y0 = round(left * step0), round(top * step0)
                thumb[top : top + bh, left : left + bw] = self.read_region(x0, y0, (bw, bh), mpp)
        logger.debug("thumbnail of %s at %s mpp: %sx%s px", self.slide_id, mpp, out_w, out_h)
        return thumb

    # -- helpers ---------------------------------------------------------------------------------

    def _read_padded(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read a box in level pixels that may reach outside the level; outside is white."""
        lw, lh = self.level_dimensions[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lw), min(y + h, lh)
        if x0 == x and y0 == y and x1 == x + w and y1 == y + h:
            return self._read_checked(level, x, y, w, h)
        out = np.full((h, w, 3), _BACKGROUND, np.uint8)
        if x1 > x0 and y1 > y0:
            inner = self._read_checked(level, x0, y0, x1 - x0, y1 - y0)
            out[y0 - y : y1 - y, x0 - x : x1 - x] = inner
        return out

    def _read_checked(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """`_read_level`, with a decoder's failure turned into an error naming slide and box."""
        try:
            return self._read_level(level, x, y, w, h)
        except (UnipipeError, MemoryError):
            raise
        except Exception as err:
            raise self._decode_error(level, x, y, w, h, err) from err

    def _decode_error(
        self, level: int, x: int, y: int, w: int, h: int, err: Exception
    ) -> SlideReadError:
        """The error for a box (level pixels) whose stored pixels cannot be decoded."""
        return SlideReadError(
            f"slide {self.slide_id!r} ('{self.path}') cannot be decoded at level {level}, "
            f"box x={x} y={y} w={w} h={h} (level pixels): {type(err).__name__}: {err}. "
            "The file is probably damaged: copy or export it again, or remove its row "
            "from the slide manifest"
        )

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"{type(self).__name__}(slide_id={self.slide_id!r}, path='{self.path}', "
            f"mpp={self.mpp:g}, dimensions={w}x{h}, levels={len(self.level_dimensions)})"
        )
