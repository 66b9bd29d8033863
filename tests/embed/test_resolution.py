"""Tests of embedding at 224..1792 px by interpolating position embeddings (dynamic size)."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from unipipe.embed.encoders import UNI_ARCH, resolve_encoder
from unipipe.embed.rois import run_embed_rois

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "init_values": 1e-5}


@pytest.mark.parametrize("side", [224, 448, 896, 1344, 1792])
def test_encoder_embeds_every_sweep_resolution(side: int, tmp_path: Path) -> None:
    """A UNI-layout checkpoint embeds at each BACH / UniToPatho sweep side."""
    torch.save(timm.create_model(UNI_ARCH, pretrained=False, num_classes=0, **TINY).state_dict(),
               tmp_path / "w.bin")  # fmt: skip
    model, meta = resolve_encoder("uni", {"kind": "checkpoint", "path": str(tmp_path / "w.bin"),
                                          "arch": UNI_ARCH, "kwargs": TINY})  # fmt: skip
    with torch.inference_mode():
        out = model(torch.randn(1, 3, side, side))
    assert out.shape == (1, meta.embed_dim)
    assert torch.isfinite(out).all()


def test_dynamic_size_equals_resampled_pos_embed() -> None:
    """At 448 px the encoder equals a 448-px model given timm's resampled 14x14 -> 28x28 grid."""
    torch.manual_seed(0)
    model, _ = resolve_encoder("r", {"kind": "random", "arch": UNI_ARCH, "kwargs": TINY})
    fixed = timm.create_model(UNI_ARCH, pretrained=False, num_classes=0, img_size=448, **TINY)
    state = model.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (28, 28), (14, 14),
                                                num_prefix_tokens=1)  # fmt: skip
    fixed.load_state_dict(state)
    x = torch.randn(2, 3, 448, 448)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), fixed.eval()(x))


def test_run_embed_rois_at_448(demo_task: dict, tiny_random_spec: dict, tmp_path: Path) -> None:
    """The resolution sweep path: the ROI h5 records img_size 448 and finite features."""
    out = tmp_path / "f.h5"
    run_embed_rois(
        demo_task,
        encoder_name="r",
        encoder_spec=tiny_random_spec,
        out_h5=out,
        sidecar=tmp_path / "s.json",
        batch_size=32,
        num_workers=0,
        img_size=448,
    )
    with h5py.File(out) as h5:
        assert int(h5.attrs["img_size"]) == 448
        assert h5["features"].shape == (190, 32)
