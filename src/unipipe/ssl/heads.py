"""DINO / iBOT projection head: MLP, L2-normalised bottleneck, weight-normalised prototypes."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """Maps backbone tokens (..., in_dim) to prototype logits (..., n_prototypes).

    The last layer is ``weight_norm(Linear(bottleneck, n_prototypes, bias=False))`` with its
    norm fixed to 1, so logits are cosine similarities between the L2-normalised bottleneck
    and the prototype directions.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        n_prototypes: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, n_prototypes, bias=False))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        # Prototype norms are fixed at 1 and not trained (DINO's norm_last_layer).
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., n_prototypes)."""
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)
