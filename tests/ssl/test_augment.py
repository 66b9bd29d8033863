"""Tests for multi-crop augmentation on real patches: sizes, seeding, switches, device path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unipipe.ssl.augment import MultiCrop, random_resized_crop
from unipipe.ssl.config import AugmentConfig, CropConfig
from unipipe.ssl.data import open_patches
from unipipe.ssl.masking import seeded_generator
from unipipe.ssl.photometric import gaussian_blur, hed_jitter, photometric

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def patch(shard_index) -> np.ndarray:
    """One real 256-px H&E patch."""
    return open_patches(shard_index)[40]


@pytest.mark.parametrize("photometric_on", ["worker", "device"])
def test_multicrop_sizes_and_dtypes(patch, photometric_on):
    """2 globals and n locals at the configured sizes; float normalised or uint8 for the device."""
    crops = CropConfig(global_size=64, local_size=32, n_local=3)
    mc = MultiCrop(crops, AugmentConfig(photometric_on=photometric_on), mean=MEAN, std=STD)
    out = mc(patch, seeded_generator(0))
    assert [v.shape for v in out["global_crops"]] == [(3, 64, 64)] * 2
    assert [v.shape for v in out["local_crops"]] == [(3, 32, 32)] * 3
    expected = torch.float32 if photometric_on == "worker" else torch.uint8
    assert all(v.dtype == expected for v in out["global_crops"] + out["local_crops"])


def test_multicrop_same_seed_same_crops(patch):
    """Augmentation is a function of the generator seed only."""
    mc = MultiCrop(
        CropConfig(n_local=2), AugmentConfig(rotate90=True, hed_sigma=0.05), mean=MEAN, std=STD
    )
    a, b, c = (mc(patch, seeded_generator(s)) for s in (5, 5, 6))
    torch.testing.assert_close(a["local_crops"][1], b["local_crops"][1])
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])


def test_random_resized_crop_full_scale_is_resize(patch):
    """Scale (1, 1) with aspect 1 is the whole patch resized."""
    from PIL import Image

    image = Image.fromarray(patch)
    gen = seeded_generator(0)
    crops = [np.asarray(random_resized_crop(image, 128, (1.0, 1.0), gen)) for _ in range(20)]
    whole = np.asarray(image.resize((128, 128), Image.Resampling.BICUBIC))
    assert any(np.array_equal(c, whole) for c in crops)


def test_photometric_identity_when_all_probabilities_zero(patch):
    """With every probability 0 the batched path returns its input."""
    x = torch.from_numpy(patch).permute(2, 0, 1)[None].float() / 255
    cfg = AugmentConfig(jitter_p=0.0, grayscale_p=0.0)
    y = photometric(x, cfg, blur_p=0.0, solarize_p=0.0, gen=seeded_generator(0))
    torch.testing.assert_close(y, x)


def test_photometric_solarize_and_grayscale_always(patch):
    """Solarisation p=1 inverts pixels above 0.5; grayscale p=1 equalises channels."""
    x = torch.from_numpy(patch).permute(2, 0, 1)[None].float() / 255
    cfg = AugmentConfig(jitter_p=0.0, grayscale_p=1.0)
    y = photometric(x, cfg, blur_p=0.0, solarize_p=1.0, gen=seeded_generator(0))
    torch.testing.assert_close(y[:, 0], y[:, 2])
    assert float(y.max()) <= 0.5 + 1e-6


def test_gaussian_blur_preserves_mean_and_smooths(patch):
    """Blur keeps the mean intensity and lowers pixel-to-pixel variation, more for larger sigma."""
    x = torch.from_numpy(patch).permute(2, 0, 1)[None].float().repeat(2, 1, 1, 1) / 255
    y = gaussian_blur(x, torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(y.mean(), x.mean(), atol=2e-3, rtol=0)
    tv = (y[..., 1:] - y[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert float(tv[1]) < float(tv[0]) < float((x[..., 1:] - x[..., :-1]).abs().mean())


def test_hed_jitter_zero_sigma_round_trips(patch):
    """Stain jitter with sigma 0 returns the image (RGB -> HED -> RGB)."""
    x = torch.from_numpy(patch).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(
        hed_jitter(x, 0.0, seeded_generator(0)), x.clamp(1e-6, 1), atol=1e-4, rtol=0
    )
