"""Embedding a slide's curated patch store into a feature bag (features + level-0 coords)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
from torch.utils.data import DataLoader

from unipipe.embed.datasets import resize_patch
from unipipe.embed.encoders import resolve_encoder
from unipipe.embed.rois import embed_batches
from unipipe.errors import ConfigError
from unipipe.provenance import atomic_path, write_sidecar

logger = logging.getLogger(__name__)

__all__ = ["run_embed_slide"]


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

    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        h5.create_dataset("features", data=features.astype(np.float32), track_times=False)
        h5.create_dataset("coords", data=coords, track_times=False)
        h5.attrs["slide_id"] = slide_id
        h5.attrs["encoder"] = encoder_name
        h5.attrs["mpp"] = float(meta_table["mpp"].iloc[0]) if len(meta_table) else float("nan")
        h5.attrs["size_px"] = int(meta_table["size_px"].iloc[0]) if len(meta_table) else -1
        h5.attrs["img_size"] = size
    write_sidecar(sidecar, stage="embed_slide", inputs=[shard_zarr],
                  params={"slide_id": slide_id, "encoder_name": encoder_name,
                          "encoder_spec": dict(encoder_spec), "spec": spec,
                          "batch_size": batch_size, "img_size": size},
                  extra={"n_patches": len(features)})  # fmt: skip
