"""Tests for multi-crop augmentation on real patches: sizes, seeding, switches, device path."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy.stats import binom

import unipipe.ssl.photometric as photometric_mod
from unipipe.ssl import augment
from unipipe.ssl.augment import MultiCrop, crop_roles, random_resized_crop
from unipipe.ssl.config import AugmentConfig, CropConfig, PretrainConfig
from unipipe.ssl.data import open_patches
from unipipe.ssl.masking import seeded_generator
from unipipe.ssl.module import DINOv2Module
from unipipe.ssl.photometric import gaussian_blur, hed_jitter, photometric

from .conftest import TINY_YAML, UNI_YAML

YAMLS = (TINY_YAML, UNI_YAML)
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma

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


# ----- per-crop roles and probabilities ---------------------------------------------------
# Each observed count must lie in the central 1 - 1e-6 interval of Binomial(n, p): a correct
# implementation fails one check with probability under 1e-6 (the seeds are fixed, so the
# outcome is reproducible; the bound says the passing seeds were not picked). With the n
# below a role given another role's probability (0.1 / 0.2 / 0.5 / 0.8 / 1) falls outside.
ALPHA = 1e-6
SLOTS = ("first global", "second global", "local", "local")
BLUR_P = (1.0, 0.1, 0.5, 0.5)  # DINOv2: always, rarely, half the time
SOLARIZE_P = (0.0, 0.2, 0.0, 0.0)  # second global crop only


def _assert_binomial(count: int, n: int, p: float, what: str) -> None:
    low, high = binom.interval(1 - ALPHA, n, p)
    assert low <= count <= high, f"{what}: {count} of {n}, p={p} allows [{low:.0f}, {high:.0f}]"


def _assert_spans(values, low: float, high: float, what: str) -> None:
    """Uniform draws stay in [low, high] and come within 5% of the width of both ends."""
    lo, hi, tol = min(values), max(values), 0.05 * (high - low)
    assert low - 1e-6 <= lo <= low + tol, (what, lo, hi)
    assert high - tol <= hi <= high + 1e-6, (what, lo, hi)


def test_crop_roles_are_dinov2s():
    """(blur_p, solarize_p) per crop: 1.0 / 0.1 + solarise 0.2 / 0.5 for each local, read
    from the config; the defaults and both recipes carry DINOv2's jitter, grayscale, flip."""
    cfg = AugmentConfig()
    assert crop_roles(cfg, 3) == [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0), (0.5, 0.0), (0.5, 0.0)]
    assert crop_roles(cfg, 0) == [(1.0, 0.0), (0.1, 0.2)]
    other = AugmentConfig(blur_p=(0.3, 0.6, 0.9), solarize_p=0.7)
    assert crop_roles(other, 1) == [(0.3, 0.0), (0.6, 0.7), (0.9, 0.0)]
    for recipe in (PretrainConfig().augment, *(PretrainConfig.from_yaml(y).augment for y in YAMLS)):
        assert recipe.blur_p == (1.0, 0.1, 0.5)
        assert recipe.solarize_p == 0.2
        assert recipe.jitter == (0.4, 0.4, 0.2, 0.1)
        assert (recipe.jitter_p, recipe.grayscale_p, recipe.flip_p) == (0.8, 0.2, 0.5)


@pytest.fixture(scope="module")
def patches(shard_index) -> list[np.ndarray]:
    """Every real patch of the bundled slide (176, 256 px)."""
    store = open_patches(shard_index)
    return [store[i] for i in range(len(store))]


def test_worker_photometric_frequencies_per_crop(patches, monkeypatch):
    """The PIL path applies each crop's role: counted calls of PIL's blur, solarise, flip,
    grayscale and enhancers per crop slot, over 1,000 multi-crops of real patches.

    Blur (1.0 / 0.1 / 0.5 per role), solarise (second global only, 0.2, threshold 128),
    jitter 0.8 with DINOv2's strengths in a random order per image, grayscale 0.2,
    horizontal flip 0.5 (and no other transpose with rotate90 off).
    """
    n_calls, n_slots = 1000, len(SLOTS)
    counts = collections.Counter()
    factors = collections.defaultdict(list)
    orders = collections.Counter()
    slot = {"geometric": -1, "photometric": -1}
    order: list[str] = []
    # Contrast and Color convert to "L" too; only a conversion outside them is grayscale.
    in_enhancer = [0]

    def geometric(*args, **kwargs):  # called once per crop, in crop order
        slot["geometric"] += 1
        return random_resized_crop(*args, **kwargs)

    def here(stage: str = "photometric") -> int:
        return slot[stage] % n_slots

    real_photometric = augment.pil_photometric

    def photometric(*args, **kwargs):  # called once per crop, in crop order
        order.clear()
        slot["photometric"] += 1
        grays = counts["gray", here()]
        out = real_photometric(*args, **kwargs)
        if counts["gray", here()] > grays:  # the pixels agree with the count
            px = np.asarray(out)
            assert (px == px[..., :1]).all()
        if order:
            orders[tuple(order)] += 1
        return out

    def enhancer(name: str, real):
        class Recording(real):
            def __init__(self, image):
                in_enhancer[0] += 1
                try:
                    super().__init__(image)
                finally:
                    in_enhancer[0] -= 1

            def enhance(self, factor):
                factors[name].append(factor)
                order.append(name)
                counts["jitter", here()] += name == "brightness"
                return super().enhance(factor)

        return Recording

    class Blur(ImageFilter.GaussianBlur):
        def __init__(self, radius):
            counts["blur", here()] += 1
            factors["blur radius"].append(radius)
            super().__init__(radius)

    real_solarize, real_hue = ImageOps.solarize, augment._hue_shift
    real_transpose, real_convert = Image.Image.transpose, Image.Image.convert

    def solarize(image, threshold=128):
        counts["solarize", here()] += 1
        factors["solarize threshold"].append(threshold)
        return real_solarize(image, threshold)

    def hue(image, shift):
        factors["hue"].append(shift)
        order.append("hue")
        return real_hue(image, shift)

    def transpose(image, method):
        counts[method.name, here("geometric")] += 1
        return real_transpose(image, method)

    def convert(image, mode=None, *args, **kwargs):
        if mode == "L" and not in_enhancer[0]:
            counts["gray", here()] += 1
        return real_convert(image, mode, *args, **kwargs)

    monkeypatch.setattr(augment, "random_resized_crop", geometric)
    monkeypatch.setattr(augment, "pil_photometric", photometric)
    monkeypatch.setattr(augment, "_hue_shift", hue)
    monkeypatch.setattr(ImageFilter, "GaussianBlur", Blur)
    monkeypatch.setattr(ImageOps, "solarize", solarize)
    monkeypatch.setattr(Image.Image, "transpose", transpose)
    monkeypatch.setattr(Image.Image, "convert", convert)
    for name, attr in [
        ("brightness", "Brightness"),
        ("contrast", "Contrast"),
        ("saturation", "Color"),
    ]:
        monkeypatch.setattr(ImageEnhance, attr, enhancer(name, getattr(ImageEnhance, attr)))

    crops = CropConfig(global_size=32, local_size=16, n_local=2)
    mc = MultiCrop(crops, AugmentConfig(), mean=MEAN, std=STD)
    for s in range(n_calls):
        mc(patches[s % len(patches)], seeded_generator(s))
    assert slot["geometric"] == slot["photometric"] == n_calls * n_slots - 1

    for i, role in enumerate(SLOTS):
        for event, p in [
            ("blur", BLUR_P[i]),
            ("solarize", SOLARIZE_P[i]),
            ("jitter", 0.8),
            ("gray", 0.2),
            ("FLIP_LEFT_RIGHT", 0.5),
        ]:
            _assert_binomial(counts[event, i], n_calls, p, f"{event} on {role} crop {i}")
    events = {event for event, _ in counts}
    assert events == {"blur", "solarize", "jitter", "gray", "FLIP_LEFT_RIGHT"}  # no other flip
    for name, (low, high) in [
        ("brightness", (0.6, 1.4)),
        ("contrast", (0.6, 1.4)),
        ("saturation", (0.8, 1.2)),
        ("hue", (-0.1, 0.1)),
        ("blur radius", (0.1, 2.0)),
    ]:
        _assert_spans(factors[name], low, high, name)
    assert set(factors["solarize threshold"]) == {128}
    assert len(orders) == 24  # torchvision's ColorJitter: a fresh order of the 4 ops each time


@pytest.fixture(scope="module")
def small_crops(patches) -> torch.Tensor:
    """2,000 real 16-px windows (N, 3, 16, 16) uint8, each with colour and a pixel above 0.55
    (in luma and in some channel): so that grayscale and solarisation show in the pixels."""
    rng = np.random.default_rng(0)
    kept = []
    while len(kept) < 2000:
        patch = patches[int(rng.integers(len(patches)))]
        y, x = rng.integers(0, patch.shape[0] - 16, size=2)
        window = patch[y : y + 16, x : x + 16]
        f = window / 255.0
        if f.max() > 0.55 and (f @ np.array(GRAY)).max() > 0.55 and np.ptp(window, 2).max() >= 3:
            kept.append(window)
    return torch.from_numpy(np.stack(kept)).permute(0, 3, 1, 2).contiguous()


def _device_pass(small_crops: torch.Tensor) -> list[torch.Tensor]:
    """The module's device-side photometric pass over 2 global + 2 local views of the
    windows; returns each view's images back in 0-1 (N, 3, 16, 16)."""
    cfg = PretrainConfig.from_yaml(
        TINY_YAML,
        {
            "augment.photometric_on": "device",
            "crops.n_local": 2,
            "model.kwargs": {"img_size": 112, "depth": 1, "init_values": 0.1},
            "heads.n_prototypes": 8,
            "heads.hidden_dim": 8,
        },
    )
    n = small_crops.shape[0]
    batch = {
        "global_crops": small_crops.repeat(2, 1, 1, 1),
        "local_crops": small_crops.repeat(2, 1, 1, 1),
        "positions": torch.arange(n),
    }
    out = DINOv2Module(cfg, global_batch=n).on_after_batch_transfer(batch, 0)
    m = cfg.model
    views = [*out["global_crops"].split(n), *out["local_crops"].split(n)]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (m.mean, m.std))
    return [v * std + mean for v in views]


def test_device_photometric_frequencies_per_crop(small_crops, monkeypatch):
    """The batched path applies each view's role: blur and jitter found by making them
    write NaN, grayscale and solarisation from the pixels, 2,000 real windows per view."""
    n = small_crops.shape[0]
    factors = collections.defaultdict(list)

    def nan_blur(x, sigma):
        factors["blur sigma"].extend(sigma.tolist())
        return torch.full_like(x, float("nan"))

    with monkeypatch.context() as m:
        m.setattr(photometric_mod, "gaussian_blur", nan_blur)
        blurred = [v.isnan().flatten(1).any(1) for v in _device_pass(small_crops)]

    def nan_jitter(x, op, factor):
        factors[("brightness", "contrast", "saturation", "hue")[op]].extend(factor.tolist())
        return torch.full_like(x, float("nan"))

    with monkeypatch.context() as m:
        m.setattr(photometric_mod, "_jitter_ops", nan_jitter)
        jittered = [v.isnan().flatten(1).any(1) for v in _device_pass(small_crops)]

    # Jitter and blur as identities: what reaches solarisation is the window or its luma,
    # both with a pixel above 0.55, and solarisation leaves every pixel at or below 0.5.
    with monkeypatch.context() as m:
        m.setattr(photometric_mod, "_jitter_ops", lambda x, op, factor: x)
        m.setattr(photometric_mod, "gaussian_blur", lambda x, sigma: x)
        views = _device_pass(small_crops)
    gray = [((v - v[:, :1]).abs() < 1e-5).flatten(1).all(1) for v in views]
    solarized = [v.flatten(1).amax(1) <= 0.5 + 1e-5 for v in views]

    for i, role in enumerate(SLOTS):
        for event, hits, p in [
            ("blur", blurred, BLUR_P[i]),
            ("solarize", solarized, SOLARIZE_P[i]),
            ("jitter", jittered, 0.8),
            ("grayscale", gray, 0.2),
        ]:
            _assert_binomial(int(hits[i].sum()), n, p, f"{event} on {role} view {i}")
    for name, (low, high) in [
        ("brightness", (0.6, 1.4)),
        ("contrast", (0.6, 1.4)),
        ("saturation", (0.8, 1.2)),
        ("hue", (-0.1, 0.1)),
        ("blur sigma", (0.1, 2.0)),
    ]:
        _assert_spans(factors[name], low, high, name)


# ----- pathology switches: 90-degree turns and HED stain jitter ----------------------------
WHOLE = CropConfig(
    global_size=64, local_size=32, n_local=2, global_scale=(1.0, 1.0), local_scale=(1.0, 1.0)
)
STILL = {"flip_p": 0.0, "photometric_on": "device"}  # no flip; uint8 crops, no photometric


def _poses(crop: torch.Tensor, upright: torch.Tensor) -> list[tuple[int, bool]]:
    """The (quarter turns, mirrored) of ``upright`` that ``crop`` is exactly."""
    up = upright.numpy()
    return [
        (k, mirrored)
        for mirrored in (False, True)
        for k in range(4)
        if np.array_equal(crop.numpy(), np.rot90(up[..., ::-1] if mirrored else up, k, (1, 2)))
    ]


@pytest.mark.parametrize("flip_p", [0.0, 0.5])
def test_rotate90_turns_each_crop_by_a_random_quarter(patches, flip_p):
    """Whole-patch crops (scale 1) with rotate90 are the upright crop turned by k x 90 degrees,
    each k about a quarter of the time; with the flip too, all 8 poses of the square occur.
    With rotate90 off a crop is upright (or only mirrored)."""
    patch = patches[12]
    upright = MultiCrop(WHOLE, AugmentConfig(**STILL), mean=MEAN, std=STD)(
        patch, seeded_generator(0)
    )
    upright = {"global": upright["global_crops"][0], "local": upright["local_crops"][0]}
    for rotate90 in (False, True):
        augment_cfg = AugmentConfig(**{**STILL, "flip_p": flip_p, "rotate90": rotate90})
        mc = MultiCrop(WHOLE, augment_cfg, mean=MEAN, std=STD)
        poses = collections.Counter()
        n_seeds = 80
        for s in range(n_seeds):
            out = mc(patch, seeded_generator(s))
            crops = [("global", c) for c in out["global_crops"]]
            crops += [("local", c) for c in out["local_crops"]]
            for kind, crop in crops:
                (pose,) = _poses(crop, upright[kind])  # a real patch: only one pose fits
                poses[pose] += 1
        n = 4 * n_seeds
        turns = range(4) if rotate90 else [0]
        mirrors = [False, True] if flip_p else [False]
        assert set(poses) == {(k, m) for k in turns for m in mirrors}, poses
        for k in turns:
            count = sum(c for (turn, _), c in poses.items() if turn == k)
            _assert_binomial(count, n, 1 / len(turns), f"{k} quarter turns")


# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) as optical densities
# per RGB channel, at unit length as in their paper.
RUIFROK = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RUIFROK = RUIFROK / np.linalg.norm(RUIFROK, axis=1, keepdims=True)


def _hed(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (..., 3) H, E, D densities in natural-log optical density.

    skimage.color.rgb2hed (not a dependency) gives these divided by ln(1e6) and clipped at
    0; the clip would bend the affine relation checked below near 0, so it is left out.
    """
    od = -np.log(np.maximum(rgb / 255.0, 1e-6))
    return od @ np.linalg.inv(RUIFROK)


@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_hed_jitter_moves_stain_densities_by_sigma(patches, sigma):
    """Stain jitter rescales and shifts each stain density on its own, by U(1 +- sigma) and
    U(+- sigma), once per patch (every crop shares it); pure white becomes the shift's
    colour only: at most sigma of each stain. With hed_sigma 0 the crop is the patch."""
    # Stained tissue to fit the densities on, and background with pure-white pixels.
    patch = next(
        p for p in patches if (p == 255).all(2).sum() > 100 and (p.max(2) < 200).mean() > 0.3
    )
    size = patch.shape[0]
    whole = dataclasses.replace(WHOLE, global_size=size, local_size=size, n_local=1)
    off = MultiCrop(whole, AugmentConfig(**STILL), mean=MEAN, std=STD)(patch, seeded_generator(0))
    for crop in off["global_crops"] + off["local_crops"]:
        np.testing.assert_array_equal(crop.permute(1, 2, 0).numpy(), patch)

    white = (patch == 255).all(axis=2)
    # Brightest a white pixel may become: every stain shifted by +sigma.
    darkest_white = 255 * np.exp(-sigma * RUIFROK.sum(axis=0)) - 0.5
    before = _hed(patch)
    mc = MultiCrop(whole, AugmentConfig(**STILL, hed_sigma=sigma), mean=MEAN, std=STD)
    slopes, shifts = [], []
    for s in range(30):
        out = mc(patch, seeded_generator(s))
        crops = [c.permute(1, 2, 0).numpy() for c in out["global_crops"] + out["local_crops"]]
        for crop in crops[1:]:
            np.testing.assert_array_equal(crop, crops[0])
        stained = crops[0]
        assert (stained[white] >= darkest_white).all()
        assert (stained[white] == stained[white][0]).all()  # one colour for all of white
        # Pixels neither clipped at white nor so dark that rounding to uint8 dominates.
        fit = ((stained >= 8) & (stained <= 250)).all(axis=2) & (patch >= 8).all(axis=2)
        assert fit.mean() > 0.3
        after = _hed(stained)
        for stain in range(3):
            x, y = before[fit][:, stain], after[fit][:, stain]
            (slope, shift), (residual,), *_ = np.polyfit(x, y, 1, full=True)
            assert np.sqrt(residual / fit.sum()) < 0.01  # affine in this stain alone
            slopes.append(slope)
            shifts.append(shift)
    slopes, shifts = np.array(slopes).reshape(-1, 3), np.array(shifts).reshape(-1, 3)
    assert (np.abs(slopes - 1) <= 1.05 * sigma).all()
    assert (np.abs(shifts) <= 1.05 * sigma).all()
    # 30 uniform draws cover more than half of their range (fails with p ~ 1e-7 per stain).
    assert (np.ptp(slopes, axis=0) > sigma).all()
    assert (np.ptp(shifts, axis=0) > sigma).all()
