"""Where each frame of a DICOM file's Pixel Data lies, so frames are read one at a time.

Loading Pixel Data whole would hold a multi-gigabyte single-file WSI in memory. This
module walks the element's item headers once (explicit VR little endian, the encoding of
every compressed transfer syntax) and reads a frame's bytes with ``os.pread`` on demand.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pydicom

__all__ = ["FrameFile"]

_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_END = (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF


class FrameFile:
    """Byte ranges of the frames of one DICOM file, read lazily.

    Args:
        path: the file.
        ds: its dataset, read with ``stop_before_pixels=True`` from the same file.
        pixel_data_offset: file offset of the Pixel Data element (where reading stopped).

    Raises:
        ValueError: the element cannot be located or its frames not delimited.
    """

    def __init__(self, path: Path, ds: pydicom.Dataset, pixel_data_offset: int) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - kept open for pread until close()
        try:
            self._ranges = _frame_ranges(self._file, ds, pixel_data_offset)
        except Exception:
            self._file.close()
            raise

    def __len__(self) -> int:
        return len(self._ranges)

    def read(self, index: int) -> bytes:
        """The encoded bytes of frame ``index`` (fragments joined)."""
        fd = self._file.fileno()
        return b"".join(os.pread(fd, length, offset) for offset, length in self._ranges[index])

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _frame_ranges(fh, ds: pydicom.Dataset, start: int) -> list[list[tuple[int, int]]]:
    """Per frame, the (offset, length) of each of its fragments (or its native bytes)."""
    fh.seek(start)
    header = fh.read(12)
    if header[:4] != _PIXEL_DATA_TAG:
        raise ValueError("Pixel Data element not found where the header ends")
    n_frames = int(ds.get("NumberOfFrames", 1))
    if len(header) < 8:
        raise ValueError("file ends inside the Pixel Data header")
    if header[4:6] in (b"OB", b"OW"):  # explicit VR: tag, VR, 2 reserved bytes, length
        length, data_start = struct.unpack("<I", header[8:12])[0], start + 12
    else:  # implicit VR (native pixels only): tag, length
        length, data_start = struct.unpack("<I", header[4:8])[0], start + 8
    if length != _UNDEFINED:  # native (uncompressed) frames of equal size
        size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel)
        return [[(data_start + i * size, size)] for i in range(n_frames)]

    items = []  # (item start offset, data offset, length)
    position = data_start
    while True:
        fh.seek(position)
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError("Pixel Data ends without a sequence delimiter")
        group, element, item_length = struct.unpack("<HHI", raw)
        if (group, element) == _SEQUENCE_END:
            break
        if (group, element) != _ITEM or item_length == _UNDEFINED:
            raise ValueError(f"unexpected item ({group:04X},{element:04X}) in Pixel Data")
        items.append((position, position + 8, item_length))
        position += 8 + item_length
    table, fragments = items[0], items[1:]
    if len(fragments) == n_frames:
        return [[(offset, length)] for _, offset, length in fragments]
    if table[2] == 0:
        raise ValueError(f"{len(fragments)} fragments for {n_frames} frames and no offset table")
    fh.seek(table[1])
    offsets = struct.unpack(f"<{table[2] // 4}I", fh.read(table[2]))
    first = fragments[0][0]
    starts = [first + o for o in offsets] + [position]
    return [
        [(offset, length) for item, offset, length in fragments if lo <= item < hi]
        for lo, hi in zip(starts, starts[1:], strict=False)
    ]
