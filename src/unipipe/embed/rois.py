"""Embedding ROI datasets with a frozen encoder into the ROI feature h5."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from unipipe.embed.datasets import build_dataset, normalise_batch
from unipipe.embed.encoders import resolve_encoder
from unipipe.errors import ConfigError
from unipipe.provenance import atomic_path, write_sidecar

logger = logging.getLogger(__name__)

__all__ = ["embed_batches", "run_embed_rois", "write_roi_h5"]


def embed_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: str = "cpu",
) -> np.ndarray:
    """Run ``model`` over uint8 batches, normalising each once on ``device``.

    ``batches`` yields x (B, 3, S, S) uint8 tensors or (x, ids) pairs. Patches stay uint8
    up to here (a quarter of the bytes through DataLoader workers and the host-to-device
    copy); the float input is built on the device, in the dtype of the model's weights.

    Returns:
        (N, D) float32 CLS embeddings in batch order.
    """
    model = model.to(device).eval()
    weight = next(model.parameters(), None)
    dtype = weight.dtype if weight is not None and weight.is_floating_point() else torch.float32
    buffer: torch.Tensor | None = None  # float32 input, reused while the batch shape holds
    out = []
    with torch.inference_mode():
        for batch in batches:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            x = x.to(device, non_blocking=True)
            if buffer is None or buffer.shape != x.shape:
                buffer = torch.empty(x.shape, dtype=torch.float32, device=x.device)
            x = normalise_batch(x, mean=mean, std=std, dtype=dtype, out=buffer)
            # a copy: an encoder that returns a view of its input would alias the buffer
            out.append(model(x).float().cpu().numpy().copy())  # (B, D)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def write_roi_h5(
    out_h5: str | os.PathLike[str],
    *,
    features: np.ndarray,
    labels: np.ndarray,
    splits: list[str],
    paths: list[str],
    label_names: list[str],
    encoder: str,
    dataset: str,
    extra_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write the ROI feature file of the contract, atomically and without HDF5 timestamps.

    Datasets: ``features`` (N, D) float32, ``labels`` (N,) int64, ``split`` and ``paths``
    (N,) bytes. Attributes: ``label_names`` (list of str), ``encoder``, ``dataset``.
    """
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        h5.create_dataset("features", data=features.astype(np.float32), track_times=False)
        h5.create_dataset("labels", data=labels.astype(np.int64), track_times=False)
        h5.create_dataset("split", data=np.array(splits, dtype="S"), track_times=False)
        h5.create_dataset("paths", data=np.array(paths, dtype="S"), track_times=False)
        h5.attrs["label_names"] = list(label_names)
        h5.attrs["encoder"] = encoder
        h5.attrs["dataset"] = dataset
        for key, value in (extra_attrs or {}).items():
            h5.attrs[key] = value


def run_embed_rois(
    dataset_spec: Mapping[str, Any],
    *,
    encoder_name: str,
    encoder_spec: Mapping[str, Any],
    out_h5: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
    batch_size: int = 64,
    num_workers: int = 0,
    img_size: int | None = 224,
    device: str = "cpu",
) -> None:
    """Embed every ROI of a task's dataset with one encoder (CLS token) into ``out_h5``.

    Args:
        dataset_spec: the task entry (``adapter``, ``path``, ``classes``, optional ``splits``).
        encoder_name: the encoder's config name, stored in the h5 ``encoder`` attribute.
        encoder_spec: its ``encoders:`` config entry (see ``resolve_encoder``).
        out_h5: the ROI feature file written.
        sidecar: the stage's provenance JSON.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes decoding and resizing images.
        img_size: input side in pixels every ROI is resized to (the resolution sweep sets
            448..1792; position embeddings are interpolated); None = the encoder's own.
        device: torch device for the forward pass, e.g. ``cpu`` or ``cuda``.
    """
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"embed.batch_size must be >= 1 and num_workers >= 0, got {batch_size}")
    model, meta = resolve_encoder(encoder_name, encoder_spec)
    size = int(img_size or meta.img_size)
    if size % meta.patch_size:
        raise ConfigError(f"embed.img_size {size} is not a multiple of patch {meta.patch_size}")
    logger.info(
        "embed %s with %s at %s px, batch %s",
        dataset_spec.get("path"),
        encoder_name,
        size,
        batch_size,
    )

    dataset = build_dataset(dataset_spec, img_size=size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.startswith("cuda"))  # fmt: skip
    features = embed_batches(model, loader, mean=meta.mean, std=meta.std, device=device)

    write_roi_h5(
        out_h5,
        features=features,
        labels=np.array([it.label for it in dataset.items]),
        splits=[it.split for it in dataset.items],
        paths=[it.path for it in dataset.items],
        label_names=list(dataset.label_names),
        encoder=encoder_name,
        dataset=os.fspath(dataset_spec["path"]),
        extra_attrs={
            "img_size": size,
            "encoder_meta": json.dumps(_meta_dict(meta), sort_keys=True),
        },
    )
    params = {
        "dataset": dict(dataset_spec),
        "encoder_name": encoder_name,
        "encoder_spec": dict(encoder_spec),
        "batch_size": batch_size,
        "img_size": size,
    }
    inputs = [
        p
        for p in (dataset_spec["path"], encoder_spec.get("encoder_json"), encoder_spec.get("path"))
        if p
    ]
    write_sidecar(
        sidecar,
        stage="embed_rois",
        params=params,
        inputs=inputs,
        extra={"n_rois": len(dataset), "embed_dim": int(features.shape[1])},
    )
    logger.info("wrote %s (%s x %s)", out_h5, *features.shape)


def _meta_dict(meta: Any) -> dict[str, Any]:
    """EncoderMeta as plain JSON values."""
    from unipipe.provenance import to_jsonable

    return to_jsonable(meta)
