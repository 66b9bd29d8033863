"""Tests for the DINO projection head."""

from __future__ import annotations

import torch

from unipipe.ssl.heads import DINOHead


def test_dino_head_logits_are_cosines_to_prototypes():
    """Logits are bounded by 1 in magnitude: unit bottleneck times unit-norm prototypes."""
    torch.manual_seed(0)
    head = DINOHead(32, n_prototypes=100, hidden_dim=64, bottleneck_dim=16, n_layers=3)
    with torch.no_grad():
        logits = head(torch.randn(5, 7, 32) * 100)
    assert logits.shape == (5, 7, 100)
    assert float(logits.abs().max()) <= 1.0 + 1e-5
    weight = head.last_layer.weight.detach()
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(100))


def test_dino_head_prototype_norm_not_trainable():
    """The weight-norm magnitude is fixed at 1; only the directions train."""
    head = DINOHead(8, n_prototypes=10, hidden_dim=16, bottleneck_dim=4)
    params = head.last_layer.parametrizations.weight
    assert not params.original0.requires_grad
    assert params.original1.requires_grad
    assert len([m for m in head.mlp if isinstance(m, torch.nn.Linear)]) == 3
