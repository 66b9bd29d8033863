"""Tests of the embedding transform (decode, resize, normalise) against a PIL reference."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from unipipe.embed.datasets import decode_rgb, normalise_batch, resize_patch
from unipipe.embed.encoders import IMAGENET_MEAN, IMAGENET_STD
from unipipe.embed.rois import embed_batches

# Stated tolerance of the fast transform against PIL's: resized pixels within 2 grey levels
# at every sweep side, and on average far under one level at the 256 -> 224 demo resize.
MAX_LEVELS = 2
MEAN_LEVELS_224 = 0.01


def _tile_bytes(zip_path: str, step: int = 1) -> list[bytes]:
    """Every ``step``-th JPEG tile of the real TCGA zip, in name order."""
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".jpg"))
        return [zf.read(n) for n in names[::step]]


def _pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _pil_model_input(data: bytes, size: int) -> torch.Tensor:
    """The straightforward reference: PIL decode, PIL bilinear resize, float normalise."""
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0  # (3, S, S)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def test_decode_rgb_equals_pil_on_every_real_tile(demo_task: dict) -> None:
    """The libjpeg-turbo fast path gives PIL's exact pixels on all 190 TCGA tiles."""
    tiles = _tile_bytes(demo_task["path"])
    assert len(tiles) == 190
    for data in tiles:
        np.testing.assert_array_equal(decode_rgb(data), _pil_rgb(data))


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA")])
def test_decode_rgb_other_layouts_match_pil(fmt: str, mode: str, demo_task: dict) -> None:
    """Grey and CMYK JPEGs and an RGBA PNG of a real tile decode to PIL's RGB."""
    buffer = io.BytesIO()
    Image.fromarray(_pil_rgb(_tile_bytes(demo_task["path"])[0])).convert(mode).save(buffer, fmt)
    data = buffer.getvalue()
    rgb = decode_rgb(data)
    assert rgb.shape == (256, 256, 3)
    np.testing.assert_array_equal(rgb, _pil_rgb(data))


@pytest.mark.parametrize("size", [224, 448, 1792])
def test_model_input_close_to_pil_reference(size: int, demo_task: dict) -> None:
    """Normalised input of the fast path is within 2 grey levels of the PIL reference."""
    level = 1.0 / (255.0 * min(IMAGENET_STD))  # one grey level in normalised units
    diffs = []
    for data in _tile_bytes(demo_task["path"], step=20 if size > 448 else 2):
        patch = resize_patch(decode_rgb(data), img_size=size)
        assert (patch.dtype, tuple(patch.shape)) == (torch.uint8, (3, size, size))
        x = normalise_batch(patch[None], mean=IMAGENET_MEAN, std=IMAGENET_STD)[0]
        diffs.append((x - _pil_model_input(data, size)).abs())
    worst = max(float(d.max()) for d in diffs) / level
    average = float(np.mean([float(d.mean()) for d in diffs])) / level
    assert worst <= MAX_LEVELS + 1e-3
    if size == 224:
        assert average <= MEAN_LEVELS_224


def test_normalise_batch_out_buffer_and_dtype(demo_task: dict) -> None:
    """Writing into a reused float32 buffer or casting to bf16 gives the same values."""
    tiles = _tile_bytes(demo_task["path"], step=40)
    batch = torch.stack([resize_patch(decode_rgb(b), img_size=224) for b in tiles])
    plain = normalise_batch(batch, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    buffer = torch.full(batch.shape, float("nan"))
    into = normalise_batch(batch, mean=IMAGENET_MEAN, std=IMAGENET_STD, out=buffer)
    assert into.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(into, plain, rtol=0, atol=0)
    half = normalise_batch(batch, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), plain, rtol=2**-8, atol=0)


def test_embed_batches_does_not_alias_reused_buffer(demo_task: dict) -> None:
    """An encoder returning a view of its input still gives each batch its own rows."""
    tiles = _tile_bytes(demo_task["path"], step=20)
    patches = torch.stack([resize_patch(decode_rgb(b), img_size=32) for b in tiles])
    batches = [patches[:4], patches[4:8]]  # same shape: the float buffer is reused
    features = embed_batches(nn.Flatten(), batches, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    expected = normalise_batch(patches[:8], mean=IMAGENET_MEAN, std=IMAGENET_STD).flatten(1)
    np.testing.assert_array_equal(features, expected.numpy())
