"""Segmentation probe: a linear classifier on frozen ViT patch tokens, scored by Dice and IoU.

UNI's SegPath figures come from fine-tuning the encoder inside ViT-Adapter + Mask2Former;
this probe keeps the encoder frozen and fits one logistic regression per token, so its
Dice is a lower bound to compare encoders with, not a reproduction of UNI's numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from unipipe.embed.datasets import normalise_batch, resize_patch
from unipipe.embed.encoders import resolve_encoder
from unipipe.errors import ConfigError
from unipipe.provenance import write_json, write_sidecar

logger = logging.getLogger(__name__)

__all__ = [
    "SegProbeParams",
    "dice",
    "iou",
    "patch_tokens",
    "read_seg_pairs",
    "run_segmentation_probe",
]


@dataclass(frozen=True, kw_only=True)
class SegProbeParams:
    """Segmentation probe settings (config key ``evaluate.segmentation_probe``).

    Attributes:
        img_size: side in px images and masks are resized to before embedding.
        C: inverse L2 strength of the per-token logistic regression (sklearn meaning).
        max_iter: lbfgs iterations.
        batch_size: images per forward pass.
    """

    img_size: int = 224
    C: float = 1.0
    max_iter: int = 1000
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.img_size < 16 or self.C <= 0 or self.max_iter < 1 or self.batch_size < 1:
            raise ConfigError("evaluate.segmentation_probe: img_size >= 16, C > 0, max_iter >= 1")


def read_seg_pairs(root: str | os.PathLike[str], split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of ``{root}/{split}/images/<name>`` and ``.../masks/<name>``.

    Masks are single-channel; any non-zero pixel is foreground. Pairs are sorted by name.
    """
    images = Path(root) / split / "images"
    masks = Path(root) / split / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise ConfigError(f"segmentation data: expected {images} and {masks} (segpath adapter)")
    pairs = [(p, masks / p.name) for p in sorted(images.iterdir()) if (masks / p.name).is_file()]
    if not pairs:
        raise ConfigError(f"no image with a same-named mask under {images} and {masks}")
    return pairs


def _load(pairs: Sequence[tuple[Path, Path]], size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(B, 3, S, S) uint8 images and (B, S, S) bool masks, nearest-resized."""
    images, masks = [], []
    for image_path, mask_path in pairs:
        with Image.open(image_path) as im:
            images.append(resize_patch(np.asarray(im.convert("RGB")), img_size=size))
        with Image.open(mask_path) as m:
            masks.append(np.asarray(m.convert("L").resize((size, size), Image.Resampling.NEAREST)))
    return torch.stack(images), np.stack(masks) > 0


def patch_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, H/p, W/p, D) patch tokens (prefix tokens dropped)."""
    tokens = model.forward_features(x)  # (B, prefix + N, D)
    grid_h, grid_w = model.patch_embed.dynamic_feat_size(x.shape[-2:])
    tokens = tokens[:, getattr(model, "num_prefix_tokens", 1) :]
    return tokens.reshape(x.shape[0], grid_h, grid_w, -1)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Global Dice 2|P & T| / (|P| + |T|) over all pixels; 1.0 when both are empty."""
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, target).sum() / total)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Global IoU (Jaccard) |P & T| / |P | T| over all pixels; 1.0 when both are empty."""
    union = np.logical_or(pred, target).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, target).sum() / union)


def _per_class(pred: np.ndarray, target: np.ndarray) -> dict[str, dict[str, float]]:
    """Dice and IoU of each class of the binary task (SegPath: background vs the cell type)."""
    return {name: {"dice": dice(pred == fg, target == fg), "iou": iou(pred == fg, target == fg)}
            for name, fg in (("background", False), ("foreground", True))}  # fmt: skip


def _embed(model: nn.Module, images: torch.Tensor, meta: Any, batch: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = normalise_batch(images[start : start + batch], mean=meta.mean, std=meta.std)
            out.append(patch_tokens(model, x).numpy())
    return np.concatenate(out)  # (B, h, w, D)


def _token_targets(masks: np.ndarray, grid: int) -> np.ndarray:
    """(B, S, S) bool -> (B, grid, grid) bool: a token is foreground if most pixels are."""
    b, s, _ = masks.shape
    cell = s // grid
    blocks = masks[:, : grid * cell, : grid * cell].reshape(b, grid, cell, grid, cell)
    return blocks.mean(axis=(2, 4)) > 0.5


def run_segmentation_probe(
    task: Mapping[str, Any],
    *,
    encoder_name: str,
    encoder_spec: Mapping[str, Any],
    params: Mapping[str, Any] | None,
    seed: int,
    metrics_json: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
) -> None:
    """Fit the token probe on the train split, report Dice on the test split.

    Args:
        task: the task entry (``id``, ``path``, ``split`` with train/test folder names).
        encoder_name: encoder config name.
        encoder_spec: its ``encoders:`` entry.
        params: the ``evaluate`` section (``segmentation_probe`` sub-section).
        seed: recorded; the probe is deterministic.
        metrics_json: ``dice`` and ``iou`` of the foreground class pooled over every test
            pixel, ``per_class`` Dice and IoU (background, foreground), the mean per-image
            Dice, plus task, protocol, encoder, n_train, n_test.
        sidecar: provenance JSON.
    """
    from sklearn.linear_model import LogisticRegression

    from unipipe.config import build_params

    p = build_params(SegProbeParams, (params or {}).get("segmentation_probe"),
                     "evaluate.segmentation_probe")  # fmt: skip
    model, meta = resolve_encoder(encoder_name, encoder_spec)
    split = dict(task.get("split") or {})
    train = read_seg_pairs(task["path"], split.get("train", "train"))
    test = read_seg_pairs(task["path"], split.get("test", "test"))
    grid = p.img_size // meta.patch_size

    train_images, train_masks = _load(train, p.img_size)
    tokens = _embed(model, train_images, meta, p.batch_size)  # (B, g, g, D)
    targets = _token_targets(train_masks, grid)
    if targets.all() or not targets.any():
        raise ConfigError(f"task {task.get('id')}: train masks are all one class at token size")
    probe = LogisticRegression(C=p.C, max_iter=p.max_iter)
    probe.fit(tokens.reshape(-1, tokens.shape[-1]), targets.ravel())

    test_images, test_masks = _load(test, p.img_size)
    test_tokens = _embed(model, test_images, meta, p.batch_size)
    prob = probe.predict_proba(test_tokens.reshape(-1, test_tokens.shape[-1]))[:, 1]
    prob = torch.from_numpy(prob.reshape(len(test), 1, grid, grid).astype(np.float32))
    # Token probabilities back to pixels: bilinear upsampling, then threshold at 0.5.
    pixels = nn.functional.interpolate(prob, size=(p.img_size, p.img_size), mode="bilinear",
                                       align_corners=False)[:, 0].numpy() > 0.5  # fmt: skip
    record = {"task": task.get("id"), "protocol": "segmentation_probe", "encoder": encoder_name,
              "n_train": len(train), "n_test": len(test), "seed": seed, "img_size": p.img_size,
              "dice": dice(pixels, test_masks), "iou": iou(pixels, test_masks),
              "per_class": _per_class(pixels, test_masks),
              "dice_per_image_mean": float(np.mean([dice(a, b) for a, b in
                                                    zip(pixels, test_masks, strict=True)]))}  # fmt: skip
    write_json(metrics_json, record)
    write_sidecar(sidecar, stage="segmentation_probe", params={"probe": p, "task": dict(task),
                  "encoder_name": encoder_name, "encoder_spec": dict(encoder_spec), "seed": seed},
                  inputs=[path for pair in [*train, *test] for path in pair])  # fmt: skip
    logger.info("%s / segmentation probe: Dice %.3f", task.get("id"), record["dice"])
