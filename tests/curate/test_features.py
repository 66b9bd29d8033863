"""Tests of the HED stain transform and per-patch features on real pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unipipe.curate.features import FEATURE_NAMES, RGB_FROM_HED, patch_features, rgb2hed
from unipipe.slide import open_slide


def test_rgb2hed_white_is_zero() -> None:
    """Unstained glass (255, 255, 255) has no stain."""
    white = np.full((4, 4, 3), 255, np.uint8)
    np.testing.assert_allclose(rgb2hed(white), 0.0, atol=1e-6)


@pytest.mark.parametrize(("stain", "amount"), [(0, 0.6), (1, 0.4), (2, 0.3)])
def test_rgb2hed_recovers_pure_stain(stain: int, amount: float) -> None:
    """A colour made of one Ruifrok stain vector maps back to that stain alone."""
    od = amount * RGB_FROM_HED[stain]  # (3,) optical density per RGB channel
    rgb = np.round(256.0 * 10.0 ** (-od) - 1.0).astype(np.uint8).reshape(1, 1, 3)
    hed = rgb2hed(rgb)[0, 0]
    expected = np.zeros(3)
    expected[stain] = amount
    np.testing.assert_allclose(hed, expected, atol=0.02)


def test_patch_features_separate_tissue_from_glass(svs_path: Path) -> None:
    """A tissue patch has more haematoxylin, optical density and texture than blank glass."""
    with open_slide(svs_path, slide_id="s1") as slide:
        tissue = slide.read_region(1026, 1539, 128, 1.0)  # dense tissue in the slide centre
        glass = slide.read_region(0, 0, 128, 1.0)  # top-left corner is background
    t, g = patch_features(tissue), patch_features(glass)
    assert t.shape == (len(FEATURE_NAMES),)
    names = list(FEATURE_NAMES)
    for name in ("feat_h_mean", "feat_od_mean", "feat_grad_mean", "feat_grey_std"):
        assert t[names.index(name)] > 2 * g[names.index(name)], name
    assert np.isfinite(t).all()


def test_patch_features_colour_terms_equal_rgb2hed(svs_path: Path) -> None:
    """The stain terms are rgb2hed's statistics bit for bit (stored features must not drift)."""
    with open_slide(svs_path, slide_id="s1") as slide:
        patch = slide.read_region(1026, 1539, 128, 1.0)
    features = dict(zip(FEATURE_NAMES, patch_features(patch), strict=True))
    hed = rgb2hed(patch)
    od = -np.log10((patch.astype(np.float32) + 1.0) / 256.0)
    assert features["feat_h_mean"] == hed[..., 0].mean()
    assert features["feat_h_std"] == hed[..., 0].std()
    assert features["feat_e_std"] == hed[..., 1].std()
    assert features["feat_d_mean"] == hed[..., 2].mean()
    assert (
        features["feat_od_mean"]
        == (-np.log10((patch.astype(np.float32) + 1.0) / 256.0).sum(axis=2)).mean()
    )
    assert features["feat_od_mean"] == od.sum(axis=2).mean()
