"""Selected patches read once from the slide into a sharded Zarr v3 store, and a dataset over them."""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from unipipe.curate.jpeg_codec import DEFAULT_QUALITY, JpegCodec, is_quality
from unipipe.curate.shard_index import FastShardArray, ShardLayoutError
from unipipe.curate.tiling import TileSpec
from unipipe.errors import ConfigError, UnipipeError
from unipipe.provenance import atomic_path, write_sidecar
from unipipe.slide import open_slide

logger = logging.getLogger(__name__)

__all__ = [
    "COMPRESSORS",
    "METADATA_COLUMNS",
    "PatchDataset",
    "ShardParams",
    "run_write_shards",
    "store_specs",
    "write_store",
]

Compressor = Literal["zstd", "blosc", "none", "jpeg"]

# name -> (params -> (zarr serializer, zarr compressor list)) of each patch chunk. "none"
# stores raw bytes; "jpeg" (lossy) replaces the raw-bytes serializer by one JPEG per patch.
COMPRESSORS: dict[str, Callable[[ShardParams], tuple[Any, list[Any]]]] = {
    "zstd": lambda p: ("auto", [ZstdCodec(level=p.level)]),
    "blosc": lambda p: ("auto", [BloscCodec(cname="zstd", clevel=p.level, shuffle="bitshuffle")]),
    "none": lambda p: ("auto", []),
    "jpeg": lambda p: (JpegCodec(quality=p.jpeg_quality), []),
}
# ``level`` means nothing to "none" and "jpeg"; any small int is accepted there.
_LEVELS = {"zstd": range(-7, 23), "blosc": range(0, 10), "none": range(-7, 23)}
_LEVELS["jpeg"] = _LEVELS["none"]

# Per-patch arrays stored next to ``patches`` (name -> dtype), in selected.parquet columns.
_PER_PATCH = {
    "x": np.int64,
    "y": np.int64,
    "mpp": np.float64,
    "size_px": np.int64,
    "cluster": np.int64,
    "tissue_fraction": np.float64,
}
METADATA_COLUMNS = ("slide_id", "x", "y", "mpp", "size_px", "cluster")

# Geometry of the (zero-length) arrays of a slide where nothing was selected.
_EMPTY_SPEC = TileSpec(256, 0.5)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardParams:
    """Patch store layout (config section ``curate.shards``).

    Attributes:
        patches_per_shard: patches per shard file (one chunk per patch inside it).
        compressor: inner chunk codec; one of ``COMPRESSORS``. zstd, blosc and none are
            lossless; jpeg stores each patch as a baseline JPEG (4:4:4 chroma, codec
            ``unipipe.jpeg`` of ``unipipe.curate.jpeg_codec``), lossy, several times smaller.
        level: compression level (zstd: -7..22, blosc: 0..9; ignored by "none" and "jpeg").
        jpeg_quality: JPEG quality factor 1..100, used by "jpeg" only.
    """

    patches_per_shard: int = 64
    compressor: Compressor = "zstd"
    level: int = 3
    jpeg_quality: int = DEFAULT_QUALITY

    def __post_init__(self) -> None:
        n = self.patches_per_shard
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"curate.shards.patches_per_shard must be an int >= 1, got {n!r}")
        if self.compressor not in COMPRESSORS:
            raise ConfigError(
                f"curate.shards.compressor {self.compressor!r} is unknown; "
                f"choose one of {sorted(COMPRESSORS)}"
            )
        levels = _LEVELS[self.compressor]
        if not isinstance(self.level, int) or self.level not in levels:
            raise ConfigError(
                f"curate.shards.level {self.level!r} is out of range for {self.compressor} "
                f"({levels.start}..{levels.stop - 1})"
            )
        if not is_quality(self.jpeg_quality):
            raise ConfigError(
                f"curate.shards.jpeg_quality must be an int in 1..100, got {self.jpeg_quality!r}"
            )


def _write_spec(
    slide: Any, group: zarr.Group, rows: pd.DataFrame, spec: TileSpec, params: ShardParams
) -> None:
    """Write one spec's arrays; patches go in whole shard-aligned blocks."""
    n, side, per_shard = len(rows), spec.size_px, params.patches_per_shard
    serializer, compressors = COMPRESSORS[params.compressor](params)
    patches = group.create_array(
        "patches",
        shape=(n, side, side, 3),
        dtype=np.uint8,
        chunks=(1, side, side, 3),
        shards=(per_shard, side, side, 3),
        serializer=serializer,
        compressors=compressors,
        fill_value=0,
        config={"write_empty_chunks": True},
    )
    block = np.empty((min(per_shard, max(n, 1)), side, side, 3), dtype=np.uint8)
    # One batched read over all rows: each stored tile is decoded once, however the rows
    # (cluster by cluster) revisit the slide; memory stays within the read cache's budget.
    reads = slide.read_regions(rows[["x", "y"]].to_numpy(), side, spec.mpp)
    for start in range(0, n, per_shard):
        stop = min(start + per_shard, n)
        for i in range(start, stop):
            block[i - start] = next(reads)
        patches[start:stop] = block[: stop - start]

    for name, dtype in _PER_PATCH.items():
        values = rows[name].to_numpy(dtype=dtype) if name in rows else np.full(n, -1, dtype)
        array = group.create_array(name, shape=(n,), dtype=dtype, chunks=(max(n, 1),), fill_value=0)
        array[:] = values


def write_store(
    slide: Any,
    selected: pd.DataFrame,
    store: str | os.PathLike[str],
    params: ShardParams,
    *,
    tissue_type: str = "",
) -> list[dict[str, Any]]:
    """Write the patch store of one open slide at ``store`` (not atomic; see run_write_shards).

    Returns:
        The ``specs`` attribute written: {name, group, size_px, mpp, n_patches} per spec.
    """
    groups = list(selected.groupby(["size_px", "mpp"], sort=True)) or [
        ((_EMPTY_SPEC.size_px, _EMPTY_SPEC.mpp), selected)
    ]
    root = zarr.open_group(store, mode="w", zarr_format=3)
    specs = []
    for i, ((size_px, mpp), rows) in enumerate(groups):
        spec = TileSpec(int(size_px), float(mpp))
        group = root if i == 0 else root.create_group(spec.name)
        _write_spec(slide, group, rows.reset_index(drop=True), spec, params)
        specs.append(
            {
                "name": spec.name,
                "group": "" if i == 0 else spec.name,
                "size_px": spec.size_px,
                "mpp": spec.mpp,
                "n_patches": len(rows),
            }
        )
    root.attrs.update(
        {
            "slide_id": slide.slide_id,
            "slide_mpp": slide.mpp,
            "mpp": specs[0]["mpp"],
            "size_px": specs[0]["size_px"],
            "patches_per_shard": params.patches_per_shard,
            "compressor": params.compressor,
            "tissue_type": tissue_type,
            "specs": specs,
        }
    )
    return specs


def run_write_shards(
    slide_path: str | os.PathLike[str],
    selected_parquet: str | os.PathLike[str],
    *,
    slide_id: str,
    mpp: float | None,
    params: ShardParams,
    shard_zarr: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
    tissue_type: str = "",
) -> None:
    """Stage ``write_shards``: read every selected patch once and store it in a Zarr v3 group.

    Args:
        slide_path: the slide file.
        selected_parquet: selected.parquet of the slide; its row order is the patch order.
        slide_id: the manifest id.
        mpp: level-0 µm/px override (None: from the slide's metadata).
        params: store layout.
        shard_zarr: output directory store, written to a temporary sibling and renamed, so a
            failed run leaves nothing behind. Layout: the group holds, for the first tile spec
            in (size_px, mpp) order, the array ``patches`` (N, H, W, 3) uint8 with one chunk
            per patch and ``patches_per_shard`` patches per shard file, plus per-patch 1-D
            arrays ``x``, ``y`` (level-0 px, int64), ``mpp`` (target µm/px, float64),
            ``size_px``, ``cluster`` (int64) and ``tissue_fraction`` (float64), in the row
            order of selected.parquet. Every further spec gets the same arrays in a sub-group
            named after the spec (``TileSpec.name``, e.g. ``512px_0.5mpp``). Group attrs:
            ``slide_id``, ``slide_mpp``, ``mpp`` and ``size_px`` (of the root spec),
            ``tissue_type``, ``patches_per_shard``, ``compressor`` and ``specs``, a list of
            {name, group, size_px, mpp, n_patches} where ``group`` is "" for the root.
        sidecar: output JSON with parameters, versions and input checksums.
        tissue_type: the manifest's tissue or organ of the slide, kept as a group attribute
            for the dataset index ("" when unknown).
    """
    logger.info("write_shards %s with %s", slide_id, params)
    selected = pd.read_parquet(selected_parquet)
    with (
        open_slide(slide_path, slide_id=slide_id, mpp=mpp) as slide,
        atomic_path(shard_zarr) as tmp,
    ):
        specs = write_store(slide, selected, tmp, params, tissue_type=tissue_type)
    logger.info("%s: wrote %s patches to %s", slide_id, [s["n_patches"] for s in specs], shard_zarr)
    write_sidecar(
        sidecar,
        stage="write_shards",
        params=params,
        inputs=[slide_path, selected_parquet],
        extra={"specs": specs},
    )


def store_specs(shard_zarr: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``specs`` attribute of a patch store: {name, group, size_px, mpp, n_patches} each."""
    return list(zarr.open_group(shard_zarr, mode="r").attrs["specs"])


def _group_for(shard_zarr: str, spec: TileSpec | str | None) -> str:
    specs = store_specs(shard_zarr)
    if spec is None:
        return specs[0]["group"]
    name = spec.name if isinstance(spec, TileSpec) else spec
    for entry in specs:
        if entry["name"] == name:
            return entry["group"]
    raise UnipipeError(
        f"patch store {shard_zarr} has no spec {name!r}; it holds {[s['name'] for s in specs]}"
    )


def _refuse_missing_shards(array: FastShardArray) -> None:
    """write_shards writes every patch, so a missing shard file is damage, not empty space:
    Zarr would return its patches as black images and training would go on silently."""
    missing = array.missing_shards()
    if missing:
        raise ShardLayoutError(
            f"{array.array_dir.parent}: {len(missing)} shard file(s) missing "
            f"({', '.join(str(p.relative_to(array.array_dir)) for p in missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); the store is damaged: delete it and "
            "rerun the workflow to rewrite it (write_shards)"
        )


class PatchDataset:
    """Map-style dataset of the patches of one or more stores: ``[i] -> (H, W, 3) uint8``.

    Safe with torch DataLoader workers: only paths and the metadata table are pickled;
    each process opens the shard files itself on first access. Reads go through the
    shard index directly (see ``FastShardArray``) when the layout allows, else zarr-python.

    Args:
        source: a list of ``.zarr`` stores, or the dataset index parquet (its ``shard_zarr``
            and ``spec`` columns).
        spec: which tile spec to read (a TileSpec or its name); None = each store's root spec.
        fast: use the direct shard-index reader when possible.
        transform: applied to each (H, W, 3) uint8 patch before it is returned (e.g. the
            augmentation of a training loop); None returns the array itself.

    Attributes:
        metadata: one row per patch: slide_id, x, y (level 0), mpp, size_px, cluster.
    """

    def __init__(
        self,
        source: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        spec: TileSpec | str | None = None,
        fast: bool = True,
        transform: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        sources = _resolve_source(source, spec)
        self.arrays = [str(Path(store) / group) for store, group in sources]
        self.fast = fast
        self.transform = transform
        frames, counts = [], []
        for store, group_path in sources:
            try:
                root = zarr.open_group(store, mode="r")
                group = root[group_path] if group_path else root
                n = group["patches"].shape[0]
                columns = {c: group[c][:] for c in METADATA_COLUMNS if c != "slide_id"}
            except FileNotFoundError:
                raise
            except Exception as err:  # broken zarr.json, a missing array, a bad chunk
                raise ShardLayoutError(
                    f"{store}: not a readable patch store ({type(err).__name__}: {err}); "
                    "delete it and rerun the workflow to rewrite it (write_shards)"
                ) from err
            try:
                direct = FastShardArray(Path(store) / group_path / "patches")
            except ShardLayoutError:  # another layout: zarr-python reads it as Zarr does
                direct = None
            if direct is not None:  # checked before any training or embedding starts
                _refuse_missing_shards(direct)
            frame = pd.DataFrame(columns)
            frame.insert(0, "slide_id", str(root.attrs.get("slide_id", "")))
            frames.append(frame)
            counts.append(n)
        self.metadata = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame({c: [] for c in METADATA_COLUMNS})
        )
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
        self._readers: dict[int, Any] = {}
        self._pid = -1

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_pid"] = {}, -1
        return state

    def _reader(self, k: int) -> Any:
        if self._pid != os.getpid():  # first use in this process (or after fork)
            self._readers, self._pid = {}, os.getpid()
        reader = self._readers.get(k)
        if reader is None:
            path = Path(self.arrays[k]) / "patches"
            reader = None
            if self.fast:
                try:
                    reader = FastShardArray(path)
                except ShardLayoutError as err:
                    logger.info("direct shard reads off for %s: %s", path, err)

            if reader is None:
                reader = zarr.open_array(path, mode="r")
            self._readers[k] = reader
        return reader

    def __getitem__(self, i: int) -> Any:
        """Patch ``i`` (in metadata row order): a (H, W, 3) uint8 array, or transform(array)."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"patch index {i} out of range for {n} patches")
        k = bisect.bisect_right(self._starts, i) - 1
        patch = np.asarray(self._reader(k)[i - self._starts[k]])
        return patch if self.transform is None else self.transform(patch)


def read_index_parquet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A dataset index parquet, or an error naming it when it is empty or not parquet."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # pyarrow's ArrowInvalid names no file
        raise ConfigError(
            f"{path}: cannot be read as a shard index ({err}); rebuild it with the "
            "build_dataset rule (delete the file and rerun the workflow)"
        ) from err


def _resolve_source(
    source: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    spec: TileSpec | str | None,
) -> list[tuple[str, str]]:
    """(store, group) pairs of the stores to read, in order."""
    if isinstance(source, str | os.PathLike) and os.fspath(source).endswith(".parquet"):
        index = read_index_parquet(source)
        if spec is not None:
            name = spec.name if isinstance(spec, TileSpec) else spec
            index = index[index["spec"] == name]
        else:
            index = index[index["group"] == ""]
        # Relative store paths: as given if they exist from here, else from the index's folder
        # (an index moved together with its stores), as unipipe.ssl.data.shard_paths does.
        folder = Path(source).parent
        stores = [
            s if Path(s).exists() or Path(s).is_absolute() else os.fspath(folder / s)
            for s in index["shard_zarr"].astype(str)
        ]
        return list(zip(stores, index["group"].astype(str), strict=True))
    if isinstance(source, str | os.PathLike):
        source = [source]
    return [(os.fspath(s), _group_for(os.fspath(s), spec)) for s in source]
