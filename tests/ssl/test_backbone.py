"""Tests for the masked ViT wrapper and DINOv2-style batch-subset drop path."""

from __future__ import annotations

import torch

from unipipe.models import build_vit
from unipipe.ssl.backbone import MaskedViT, subset_residual

TINY = {"img_size": 64, "embed_dim": 48, "depth": 3, "num_heads": 2, "init_values": 1e-5}


def test_masked_vit_eval_matches_timm_forward():
    """Without masks and in eval mode the wrapper returns timm's own CLS embedding."""
    torch.manual_seed(0)
    vit = build_vit("vit_small_patch16_224", **TINY).eval()
    wrapped = MaskedViT(vit, drop_path_rate=0.3).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = wrapped(x)
        torch.testing.assert_close(out.cls, vit(x))
    assert out.patch.shape == (2, 4 * 6, 48)


def test_masked_vit_masks_change_only_through_mask_token():
    """A mask changes the output; setting every patch to the mask token hides the image."""
    torch.manual_seed(0)
    wrapped = MaskedViT(build_vit("vit_small_patch16_224", **TINY)).eval()
    wrapped.mask_token.data.normal_()
    x = torch.randn(2, 3, 64, 64)
    none = torch.zeros(2, 16, dtype=torch.bool)
    some = none.clone()
    some[:, :5] = True
    all_ = torch.ones(2, 16, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, none).cls, wrapped(x).cls)
        assert not torch.allclose(wrapped(x, some).cls, wrapped(x).cls)
        hidden = wrapped(x, all_).cls
    torch.testing.assert_close(hidden[0], hidden[1])


def test_subset_residual_runs_branch_on_subset_and_rescales():
    """With rate 0.5 on 4 samples, 2 get x + 2 * f(x) and 2 pass through unchanged."""
    torch.manual_seed(0)
    x = torch.arange(4.0).view(4, 1)
    calls = []

    def branch(y):
        calls.append(y.shape[0])
        return torch.ones_like(y)

    out = subset_residual(x, branch, 0.5)
    assert calls == [2]
    delta = (out - x).flatten()
    assert sorted(delta.tolist()) == [0.0, 0.0, 2.0, 2.0]


def test_subset_residual_rate_zero_is_plain_residual():
    """Rate 0 runs the branch on the whole batch."""
    x = torch.randn(3, 5)
    torch.testing.assert_close(subset_residual(x, torch.sin, 0.0), x + torch.sin(x))


def test_masked_vit_drop_rates_uniform_or_linear():
    """Uniform gives every block the rate; linear rises from 0 to the rate in the last block."""
    vit = build_vit("vit_small_patch16_224", **TINY)
    assert MaskedViT(vit, drop_path_rate=0.3).drop_rates == [0.3, 0.3, 0.3]
    linear = MaskedViT(vit, drop_path_rate=0.3, drop_path_uniform=False).drop_rates
    assert linear == [0.0, 0.15, 0.3]


def test_masked_vit_select_falls_back_to_full_block_for_other_attention():
    """An attention class other than timm's plain one runs the full last block and gathers
    the selected tokens, so a variant's own internals are never bypassed."""
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    wrapped = MaskedViT(build_vit("vit_small_patch16_224", **TINY)).eval()
    wrapped.vit.blocks[-1].ls1.gamma.data.fill_(1.0)  # the attention branch counts fully
    last = wrapped.vit.blocks[-1].attn
    # A variant that changes the output: bypassing its forward would change the result.
    own = {"forward": lambda self, x, **kw: 2.0 * Attention.forward(self, x, **kw)}
    last.__class__ = type("OwnAttention", (Attention,), own)
    select = torch.zeros(2, 16, dtype=torch.bool)
    select[0, 3] = select[1, :4] = True
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full, some = wrapped(x), wrapped(x, select=select)
    torch.testing.assert_close(some.cls, full.cls)
    torch.testing.assert_close(some.patch, full.patch[select])
