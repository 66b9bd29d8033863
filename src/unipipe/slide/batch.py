"""Batched region reads over a tile grid: each tile decoded once per batch, cache bounded in bytes.

A slide job reads a grid of patches once. Read one at a time, a 256 px patch straddling
four 240 px JPEG tiles decodes all four, and its neighbours decode them again. Here the
whole batch is planned first: which tiles each box touches and when each tile is next
needed. Decoded tiles are kept only while a later box still needs them, and when the byte
budget is exceeded the tile needed furthest in the future is dropped first (Belady's
rule, optimal when the future is known, as it is here). Boxes are served in the caller's
order, so no output is ever buffered.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = ["READ_CACHE_BYTES", "BatchStats", "TileGrid", "read_boxes"]

# Default budget of decoded tiles held by one batched read. A row-major grid needs about
# one row of tiles alive at a time: 72 MB for a 100,000 px wide slide of 240 px tiles.
READ_CACHE_BYTES = 256 << 20

_BACKGROUND = 255
_NEVER = np.iinfo(np.int64).max


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """A level stored as a row-major grid of equal tiles that can be decoded one by one.

    Attributes:
        width: level width in pixels.
        height: level height in pixels.
        tile_w: tile width in pixels (edge tiles are stored full size, as TIFF and DICOM do).
        tile_h: tile height in pixels.
        decode: tile index (row * cols + col) -> (>= tile_h, >= tile_w, 3) uint8 RGB,
            decoded afresh on every call (no caching of its own).
    """

    width: int
    height: int
    tile_w: int
    tile_h: int
    decode: Callable[[int], np.ndarray]

    @property
    def cols(self) -> int:
        """Tiles per row."""
        return -(-self.width // self.tile_w)


@dataclasses.dataclass
class BatchStats:
    """What one batched read did; pass one to see it (benchmarks, tests).

    Attributes:
        boxes: boxes served.
        tiles_touched: distinct tiles the boxes overlap.
        tiles_decoded: decodes done (equals ``tiles_touched`` when the cache sufficed).
        peak_cache_bytes: most bytes of decoded tiles kept for later boxes at any time.
    """

    boxes: int = 0
    tiles_touched: int = 0
    tiles_decoded: int = 0
    peak_cache_bytes: int = 0


def _tiles_of(grid: TileGrid, x: int, y: int, w: int, h: int) -> list[int]:
    """Row-major indices of the tiles a box (inside the level) overlaps."""
    cols = grid.cols
    return [
        row * cols + col
        for row in range(y // grid.tile_h, (y + h - 1) // grid.tile_h + 1)
        for col in range(x // grid.tile_w, (x + w - 1) // grid.tile_w + 1)
    ]


def read_boxes(
    grid: TileGrid,
    boxes: Sequence[tuple[int, int, int, int]],
    *,
    cache_bytes: int = READ_CACHE_BYTES,
    stats: BatchStats | None = None,
    on_error: Callable[[tuple[int, int, int, int], Exception], Exception] | None = None,
    reuse_output: bool = False,
) -> Iterator[np.ndarray]:
    """Yield the (h, w, 3) uint8 pixels of each box (x, y, w, h in level pixels), in order.

    Boxes may reach outside the level (that part is white). Each tile is decoded once for
    the whole batch whenever the tiles that are alive at the same time fit ``cache_bytes``;
    a smaller budget (even 0) gives the same pixels with more decodes. Memory: the budget
    plus one tile plus one box.

    Args:
        grid: the level's tiles.
        boxes: (x, y, w, h) in level pixels, served in this order.
        cache_bytes: most bytes of decoded tiles kept for later boxes.
        stats: filled in as boxes are served.
        on_error: turns a decoder's exception and the box being read into the exception
            to raise (the slide's error naming slide and box); None re-raises as is.
        reuse_output: yield one buffer per box size, overwritten by the next box, for a
            consumer that is done with each box before asking for the next (a resize);
            saves allocating and faulting in a fresh megabyte per 0.5 mpp patch.
    """
    stats = stats if stats is not None else BatchStats()
    # Clip each box to the level once; its tiles, and when every tile is needed.
    clipped: list[tuple[int, int, int, int] | None] = []
    plan: list[list[int]] = []
    uses: dict[int, deque[int]] = {}
    for i, (x, y, w, h) in enumerate(boxes):
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, grid.width), min(y + h, grid.height)
        if x1 <= x0 or y1 <= y0:
            clipped.append(None)
            plan.append([])
            continue
        clipped.append((x0, y0, x1 - x0, y1 - y0))
        tiles = _tiles_of(grid, x0, y0, x1 - x0, y1 - y0)
        plan.append(tiles)
        for t in tiles:
            uses.setdefault(t, deque()).append(i)
    stats.tiles_touched = len(uses)

    cache: dict[int, np.ndarray] = {}
    next_use: dict[int, int] = {}
    farthest: list[tuple[int, int]] = []  # (-next use, tile); stale entries skipped on pop
    held = 0
    tw, th = grid.tile_w, grid.tile_h
    buffers: dict[tuple[int, int], np.ndarray] = {}
    for i, (x, y, w, h) in enumerate(boxes):
        box = clipped[i]
        inside = box is not None and box == (x, y, w, h)
        out = buffers.get((w, h)) if reuse_output else None
        if out is None:
            out = np.empty((h, w, 3), np.uint8)
            if reuse_output:
                buffers[(w, h)] = out
        if not inside:
            out[:] = _BACKGROUND
        if box is not None:
            bx, by, bw, bh = box
            for t in plan[i]:
                tile = cache.pop(t, None)
                if tile is None:
                    try:
                        tile = grid.decode(t)
                    except Exception as err:
                        if on_error is None:
                            raise
                        raise on_error(box, err) from err
                    stats.tiles_decoded += 1
                else:
                    held -= tile.nbytes
                row, col = divmod(t, grid.cols)
                # Overlap of the box with this tile, in level pixels.
                x0, y0 = max(bx, col * tw), max(by, row * th)
                x1, y1 = min(bx + bw, (col + 1) * tw), min(by + bh, (row + 1) * th)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[
                    y0 - row * th : y1 - row * th, x0 - col * tw : x1 - col * tw
                ]
                pending = uses[t]
                pending.popleft()
                if not pending:  # no later box needs it
                    next_use.pop(t, None)
                    continue
                cache[t] = tile
                held += tile.nbytes
                next_use[t] = pending[0]
                heapq.heappush(farthest, (-pending[0], t))
                while held > cache_bytes:
                    negative, victim = heapq.heappop(farthest)
                    if victim in cache and next_use[victim] == -negative:
                        held -= cache.pop(victim).nbytes
                        del next_use[victim]
                stats.peak_cache_bytes = max(stats.peak_cache_bytes, held)
        stats.boxes += 1
        yield out
