"""Feature bags (features + level-0 coords) from a curated patch store or from a whole WSI."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from unipipe.embed.datasets import resize_patch
from unipipe.embed.encoders import resolve_encoder
from unipipe.embed.rois import embed_batches
from unipipe.errors import ConfigError, SlideError
from unipipe.provenance import atomic_path, write_sidecar
from unipipe.slide import open_slide
from unipipe.slide.messages import in_slide_task

logger = logging.getLogger(__name__)

__all__ = ["run_embed_slide", "run_embed_wsi", "write_bag"]


def write_bag(
    out_h5: str | os.PathLike[str],
    *,
    features: np.ndarray,
    coords: np.ndarray,
    attrs: Mapping[str, Any],
) -> None:
    """Write a bag in the CLAM/TRIDENT layout, atomically and without HDF5 timestamps.

    Args:
        out_h5: the file.
        features: (N, D) patch embeddings, stored float32.
        coords: (N, 2) level-0 (x, y) top-left of each patch, stored int64.
        attrs: file attributes (slide_id, encoder, mpp, size_px, img_size, ...).
    """
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        h5.create_dataset("features", data=features.astype(np.float32), track_times=False)
        h5.create_dataset("coords", data=coords.astype(np.int64).reshape(-1, 2),
                          track_times=False)  # fmt: skip
        for key, value in attrs.items():
            h5.attrs[key] = value


def run_embed_slide(
    shard_zarr: str | os.PathLike[str],
    *,
    slide_id: str,
    encoder_name: str,
    encoder_spec: Mapping[str, Any],
    out_h5: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
    spec: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    img_size: int | None = 224,
    device: str = "cpu",
) -> None:
    """Embed every patch of ``shards/{slide}.zarr`` into the bag h5 slide tasks read.

    The bag uses the CLAM/TRIDENT layout ``unipipe.evaluate.features.read_bag`` reads:
    ``features`` (N, D) float32 and ``coords`` (N, 2) int64 level-0 (x, y) top-left, plus
    attrs slide_id, encoder, mpp (patch µm/px), size_px and img_size.

    Args:
        shard_zarr: the slide's patch store (``unipipe.curate.shards``).
        slide_id: recorded in the bag.
        encoder_name: encoder config name.
        encoder_spec: its ``encoders:`` entry (``resolve_encoder``).
        out_h5: the bag written (e.g. results/features/{encoder}/{slide}.h5).
        sidecar: provenance JSON.
        spec: tile spec name inside the store (None = the store's first spec).
        batch_size: patches per forward pass.
        num_workers: DataLoader workers (each opens the store itself).
        img_size: side in px patches are resized to (UNI: 256 px at 20x -> 224).
        device: torch device of the forward pass.
    """
    from unipipe.curate.shards import PatchDataset

    model, meta = resolve_encoder(encoder_name, encoder_spec)
    size = int(img_size or meta.img_size)
    if size % meta.patch_size:
        raise ConfigError(f"embed.img_size {size} is not a multiple of patch {meta.patch_size}")
    dataset = PatchDataset([shard_zarr], spec=spec,
                           transform=functools.partial(resize_patch, img_size=size))  # fmt: skip
    meta_table = dataset.metadata
    logger.info("embed slide %s: %s patches with %s at %s px", slide_id, len(dataset),
                encoder_name, size)  # fmt: skip
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if len(dataset):
        features = embed_batches(model, loader, mean=meta.mean, std=meta.std, device=device)
    else:
        features = np.zeros((0, meta.embed_dim), dtype=np.float32)
    coords = meta_table[["x", "y"]].to_numpy(dtype=np.int64).reshape(-1, 2)

    write_bag(out_h5, features=features, coords=coords, attrs={
        "slide_id": slide_id, "encoder": encoder_name,
        "mpp": float(meta_table["mpp"].iloc[0]) if len(meta_table) else float("nan"),
        "size_px": int(meta_table["size_px"].iloc[0]) if len(meta_table) else -1,
        "img_size": size})  # fmt: skip
    write_sidecar(sidecar, stage="embed_slide", inputs=[shard_zarr],
                  params={"slide_id": slide_id, "encoder_name": encoder_name,
                          "encoder_spec": dict(encoder_spec), "spec": spec,
                          "batch_size": batch_size, "img_size": size},
                  extra={"n_patches": len(features)})  # fmt: skip


def _kept_tiles(tiles_parquet: str | os.PathLike[str]) -> pd.DataFrame:
    """Kept tiles of the table's first spec, in table order (y, then x)."""
    tiles = pd.read_parquet(tiles_parquet)
    if tiles.empty:
        return tiles
    first = tiles.iloc[0]
    same_spec = tiles["size_px"].eq(first["size_px"]) & tiles["mpp"].eq(first["mpp"])
    return tiles[same_spec & tiles["keep"].astype(bool)].reset_index(drop=True)


def _wsi_batches(
    slide: Any, tiles: pd.DataFrame, *, img_size: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """(B, 3, S, S) uint8 batches read tile by tile: one batch of pixels in memory at a time."""
    for start in range(0, len(tiles), batch_size):
        rows = tiles.iloc[start : start + batch_size]
        yield torch.stack([
            resize_patch(slide.read_region(int(r.x), int(r.y), int(r.size_px), float(r.mpp)),
                         img_size=img_size)
            for r in rows.itertuples(index=False)
        ])  # fmt: skip


def run_embed_wsi(
    slide_path: str | os.PathLike[str],
    tiles_parquet: str | os.PathLike[str],
    *,
    slide_id: str,
    mpp: float | None,
    encoder_name: str,
    encoder_spec: Mapping[str, Any],
    out_h5: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
    batch_size: int = 64,
    img_size: int | None = 224,
    device: str = "cpu",
    manifest_csv: str | os.PathLike[str] | None = None,
) -> None:
    """Embed every kept tile of a WSI's tiles.parquet into the bag h5 slide tasks read.

    Patches are read from the slide in batches (``read_region`` at the tile's mpp, from the
    best pyramid level), never the whole slide at once. Same layout as ``run_embed_slide``
    (``features`` (N, D) float32, ``coords`` (N, 2) int64 level-0 top-left, attrs slide_id,
    encoder, mpp, size_px, img_size) plus attr ``size_l0``: the patch side in level-0 px.

    Args:
        slide_path: the WSI.
        tiles_parquet: its tile table (``unipipe.embed.tiles.run_tile_wsi``); the kept tiles
            of its first spec are embedded, in table order.
        slide_id: recorded in the bag.
        mpp: level-0 µm/px override (None: the file's metadata).
        encoder_name: encoder config name.
        encoder_spec: its ``encoders:`` entry (``resolve_encoder``).
        out_h5: the bag, e.g. results/embed/{encoder}/{task}/slides/{slide}.h5.
        sidecar: provenance JSON.
        batch_size: patches per forward pass (and per read batch).
        img_size: side in px patches are resized to (None: the encoder's own).
        device: torch device of the forward pass.
        manifest_csv: the task's slides.csv, named in the fix of a slide error.

    Raises:
        SlideError: the WSI cannot be opened or read; the message names the task's
            slides.csv (not config/slides.tsv) as where to fix or remove its row.
    """
    model, meta = resolve_encoder(encoder_name, encoder_spec)
    size = int(img_size or meta.img_size)
    if size % meta.patch_size:
        raise ConfigError(f"embed.img_size {size} is not a multiple of patch {meta.patch_size}")
    tiles = _kept_tiles(tiles_parquet)
    try:
        with open_slide(slide_path, slide_id=slide_id, mpp=mpp) as slide:
            slide_mpp = slide.mpp
            logger.info("embed wsi %s: %s kept tiles with %s at %s px", slide_id, len(tiles),
                        encoder_name, size)  # fmt: skip
            batches = _wsi_batches(slide, tiles, img_size=size, batch_size=batch_size)
            features = embed_batches(model, batches, mean=meta.mean, std=meta.std, device=device)
    except SlideError as err:
        raise in_slide_task(err, manifest_csv) from err
    if not len(tiles):
        logger.warning("embed wsi %s: no kept tile; the bag is empty", slide_id)
        features = np.zeros((0, meta.embed_dim), dtype=np.float32)
    spec_px = int(tiles["size_px"].iloc[0]) if len(tiles) else -1
    spec_mpp = float(tiles["mpp"].iloc[0]) if len(tiles) else float("nan")
    size_l0 = round(spec_px * spec_mpp / slide_mpp) if len(tiles) else -1

    coords = tiles[["x", "y"]].to_numpy(dtype=np.int64) if len(tiles) else np.zeros((0, 2))
    write_bag(out_h5, features=features, coords=coords, attrs={
        "slide_id": slide_id, "encoder": encoder_name, "mpp": spec_mpp, "size_px": spec_px,
        "img_size": size, "size_l0": size_l0})  # fmt: skip
    write_sidecar(sidecar, stage="embed_wsi", inputs=[slide_path, tiles_parquet],
                  params={"slide_id": slide_id, "mpp": mpp, "encoder_name": encoder_name,
                          "encoder_spec": dict(encoder_spec), "batch_size": batch_size,
                          "img_size": size},
                  extra={"n_patches": len(features), "slide_mpp": slide_mpp,
                         "size_l0": size_l0})  # fmt: skip
