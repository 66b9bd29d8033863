"""Direct reads of Zarr v3 sharded patch arrays through the shard index (pread + decode)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np

from unipipe.curate.jpeg_codec import CODEC_NAME as JPEG_CODEC_NAME
from unipipe.curate.jpeg_codec import jpeg_decode_into
from unipipe.errors import UnipipeError

logger = logging.getLogger(__name__)

__all__ = ["FastShardArray", "ShardLayoutError"]

_EMPTY = np.uint64(2**64 - 1)  # offset and nbytes of a chunk that was never written
_CRC_BYTES = 4

# Inner codecs this reader decodes itself, as (codec config -> decode(raw, out=array)):
# compressors that follow the raw "bytes" serializer, and serializers that replace it (whose
# decoder also restores the pixel layout). Anything else falls back to zarr-python.
Decoder = Callable[..., Any]
_DECODERS: dict[str, Callable[[dict[str, Any]], Decoder]] = {
    "zstd": lambda cfg: numcodecs.Zstd().decode,
    "blosc": lambda cfg: numcodecs.Blosc().decode,
}
_SERIALIZERS: dict[str, Callable[[dict[str, Any]], Decoder]] = {
    # The same call zarr-python makes through JpegCodec, so both readers agree bit for bit.
    JPEG_CODEC_NAME: lambda cfg: jpeg_decode_into,
}


class ShardLayoutError(UnipipeError, ValueError):
    """The array's zarr.json describes a layout the direct reader does not handle."""


class FastShardArray:
    """Read-only view of a sharded (N, H, W, C) array with one inner chunk per patch.

    Follows the Zarr v3 sharding spec: each shard file ends with an index of
    (offset, nbytes) little-endian uint64 pairs, one per inner chunk in C order, followed
    by its crc32c. Indexes are read (and checked) once per shard, then every patch costs
    one ``os.pread`` and one decode. File handles open lazily, so an instance built in
    one process may be used after fork or pickling (handles are not pickled).

    Args:
        array_dir: the array's directory inside the store (holding its zarr.json).
    """

    def __init__(self, array_dir: str | os.PathLike[str]) -> None:
        self.array_dir = Path(array_dir)
        meta = json.loads((self.array_dir / "zarr.json").read_text())
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"])
        self.fill_value = meta.get("fill_value", 0)
        shard_shape, codecs = self._parse(meta)
        self.per_shard = shard_shape[0]
        self.patch_shape = tuple(self.shape[1:])
        self._separator = meta["chunk_key_encoding"]["configuration"].get("separator", "/")
        self._decode = codecs
        self._fds: dict[int, int] = {}
        self._indexes: dict[int, np.ndarray] = {}

    def _parse(
        self, meta: dict[str, Any]
    ) -> tuple[tuple[int, ...], Callable[[bytes], bytes] | None]:
        shard_shape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        outer = meta["codecs"]
        if len(outer) != 1 or outer[0]["name"] != "sharding_indexed":
            raise ShardLayoutError(f"{self.array_dir}: not a sharded array")
        cfg = outer[0]["configuration"]
        inner_shape = tuple(cfg["chunk_shape"])
        index_codecs = [c["name"] for c in cfg["index_codecs"]]
        if (
            cfg.get("index_location", "end") != "end"
            or index_codecs != ["bytes", "crc32c"]
            or inner_shape != (1, *self.shape[1:])
            or shard_shape[1:] != inner_shape[1:]
            or meta["chunk_key_encoding"]["name"] != "default"
        ):
            raise ShardLayoutError(f"{self.array_dir}: unsupported shard layout {cfg}")
        inner = cfg["codecs"]
        if len(inner) == 1 and inner[0]["name"] in _SERIALIZERS:
            return shard_shape, _SERIALIZERS[inner[0]["name"]](inner[0].get("configuration", {}))
        if not inner or inner[0]["name"] != "bytes" or len(inner) > 2:
            raise ShardLayoutError(f"{self.array_dir}: unsupported inner codecs {inner}")
        if len(inner) == 1:
            return shard_shape, None
        name = inner[1]["name"]
        if name not in _DECODERS:
            raise ShardLayoutError(f"{self.array_dir}: no direct decoder for {name!r}")
        return shard_shape, _DECODERS[name](inner[1].get("configuration", {}))

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"], state["_indexes"] = {}, {}
        return state

    def _shard_path(self, shard: int) -> Path:
        return self.array_dir / self._separator.join(
            ["c", str(shard), *("0" * (len(self.shape) - 1))]
        )

    def missing_shards(self) -> list[Path]:
        """Shard files of this array that do not exist (Zarr reads them as fill values)."""
        n_shards = -(-self.shape[0] // self.per_shard)
        return [path for k in range(n_shards) if not (path := self._shard_path(k)).exists()]

    def _shard_fd(self, shard: int) -> int | None:
        fd = self._fds.get(shard)
        if fd is None:
            try:
                fd = os.open(self._shard_path(shard), os.O_RDONLY)
            except FileNotFoundError:
                return None
            self._fds[shard] = fd
        return fd

    def _index(self, shard: int, fd: int) -> np.ndarray:
        index = self._indexes.get(shard)
        if index is None:
            size = self.per_shard * 16 + _CRC_BYTES
            raw = os.pread(fd, size, os.fstat(fd).st_size - size)
            body, crc = raw[:-_CRC_BYTES], int.from_bytes(raw[-_CRC_BYTES:], "little")
            if google_crc32c.value(body) != crc:
                raise ShardLayoutError(f"{self.array_dir}: shard {shard} index checksum mismatch")
            index = np.frombuffer(body, dtype="<u8").reshape(self.per_shard, 2)
            self._indexes[shard] = index
        return index

    def __getitem__(self, i: int) -> np.ndarray:
        """Patch ``i`` as a new, writable (H, W, C) array (decoded straight into it)."""
        n = self.shape[0]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"patch index {i} out of range for {n} patches")
        shard, inner = divmod(i, self.per_shard)
        fd = self._shard_fd(shard)
        if fd is None:
            return np.full(self.patch_shape, self.fill_value, dtype=self.dtype)
        offset, nbytes = self._index(shard, fd)[inner]
        if offset == _EMPTY and nbytes == _EMPTY:
            return np.full(self.patch_shape, self.fill_value, dtype=self.dtype)
        out = np.empty(self.patch_shape, dtype=self.dtype)
        if self._decode is None:
            if nbytes != out.nbytes or os.preadv(fd, [out], int(offset)) != out.nbytes:
                raise ShardLayoutError(f"{self.array_dir}: patch {i} has {nbytes} bytes")
        else:
            try:
                self._decode(os.pread(fd, int(nbytes), int(offset)), out=out)
            except Exception as err:  # the codec's own error names neither file nor patch
                raise ShardLayoutError(
                    f"{self._shard_path(shard)}: patch {i} cannot be decoded ({err}); the "
                    "store is damaged: delete it and rerun the workflow to rewrite it"
                ) from err
        return out

    def close(self) -> None:
        """Close every open shard file."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: os may be gone already
            logger.debug("could not close shard files of %s", self.array_dir)
