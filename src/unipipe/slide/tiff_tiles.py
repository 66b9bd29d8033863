"""Direct tile reads from tiled TIFF pages: pread + tifffile's own decoder + an LRU tile cache.

OpenSlide and zarr both add per-read overhead on top of JPEG decoding; reading a tile's
bytes with one ``os.pread`` and decoding it with the page's own tifffile decoder keeps the
colour handling exact (Aperio stores RGB-coded JPEG, OME exports YCbCr JFIF; tifffile
knows which) and lets neighbouring patches reuse decoded tiles.
"""

from __future__ import annotations

import collections
import logging
import os
import threading

import numpy as np
import tifffile

from unipipe.slide.batch import TileGrid

__all__ = ["TILE_CACHE_BYTES", "TiledPage", "tiled_page_supported"]

logger = logging.getLogger(__name__)

# Decoded tiles kept per slide, in bytes (about 170 Aperio 240-px tiles per 32 MiB).
TILE_CACHE_BYTES = 128 << 20

_BACKGROUND = 255


def tiled_page_supported(page: tifffile.TiffPage) -> bool:
    """True for a tiled, chunky, 8-bit RGB(A) page without tiles in depth."""
    return bool(
        page.is_tiled
        and page.tiledepth == 1
        and page.imagedepth == 1
        and page.dtype == np.uint8
        and page.samplesperpixel in (3, 4)
        and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
        and page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    )


class TiledPage:
    """Region reads of one tiled TIFF page, decoding each tile at most once while cached.

    Args:
        tif: the open file (its handle's descriptor is read with ``os.pread``).
        page: a page for which `tiled_page_supported` is true.
        cache_bytes: budget of the decoded-tile cache.
    """

    def __init__(
        self, tif: tifffile.TiffFile, page: tifffile.TiffPage, cache_bytes: int = TILE_CACHE_BYTES
    ) -> None:
        self._fd = tif.filehandle.fileno()
        self._page = page
        self._decode = page.decode
        self._tables = page.jpegtables
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self._tile_w, self._tile_h = int(page.tilewidth), int(page.tilelength)
        self._cols = -(-self.width // self._tile_w)
        self._offsets = page.dataoffsets
        self._counts = page.databytecounts
        tile_bytes = self._tile_w * self._tile_h * 3
        self._capacity = max(4, cache_bytes // tile_bytes)
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()  # threads may share a slide; decoding runs unlocked

    def _tile(self, index: int) -> np.ndarray:
        """Decoded (tile_h, tile_w, 3) pixels of tile ``index`` (row-major), cached."""
        with self._lock:
            tile = self._cache.get(index)
            if tile is not None:
                self._cache.move_to_end(index)
                return tile
        tile = self.decode_tile(index)
        with self._lock:
            self._cache[index] = tile
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return tile

    def decode_tile(self, index: int) -> np.ndarray:
        """Decode tile ``index`` (row-major) afresh: (tile_h, tile_w, 3) uint8 RGB, uncached."""
        count = int(self._counts[index])
        if count == 0:  # a tile the scanner never wrote: glass
            return np.full((self._tile_h, self._tile_w, 3), _BACKGROUND, np.uint8)
        data = os.pread(self._fd, count, int(self._offsets[index]))
        segment, _, _ = self._decode(data, index, jpegtables=self._tables)
        return np.ascontiguousarray(segment.reshape(self._tile_h, self._tile_w, -1)[..., :3])

    def grid(self) -> TileGrid:
        """The page as a tile grid for batched reads (`unipipe.slide.batch`)."""
        return TileGrid(self.width, self.height, self._tile_w, self._tile_h, self.decode_tile)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the box at (x, y) in page pixels; the box lies inside the page."""
        out = np.empty((h, w, 3), np.uint8)
        tw, th = self._tile_w, self._tile_h
        for row in range(y // th, (y + h - 1) // th + 1):
            for col in range(x // tw, (x + w - 1) // tw + 1):
                tile = self._tile(row * self._cols + col)
                # Overlap of the request with this tile, in page pixels.
                x0, y0 = max(x, col * tw), max(y, row * th)
                x1, y1 = min(x + w, (col + 1) * tw), min(y + h, (row + 1) * th)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[
                    y0 - row * th : y1 - row * th, x0 - col * tw : x1 - col * tw
                ]
        return out

    def clear(self) -> None:
        """Drop the decoded tiles."""
        with self._lock:
            self._cache.clear()
