"""KoLeo regulariser: spreads the student's CLS embeddings by penalising close nearest neighbours."""

from __future__ import annotations

import torch

__all__ = ["koleo_loss"]


def koleo_loss(x: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """-mean log distance of each L2-normalised row of (B, D) ``x`` to its nearest other row.

    Computed in fp32 outside autocast. Finite for any batch: a batch of one has no
    neighbour and gives 0, duplicates give -log(eps).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        if x.shape[0] < 2:
            return x.sum() * 0.0
        x = torch.nn.functional.normalize(x, dim=-1, eps=eps)
        with torch.no_grad():
            dots = x @ x.t()  # (B, B) cosine similarities
            dots.fill_diagonal_(-2.0)  # below any real similarity: never one's own neighbour
            nearest = dots.argmax(dim=1)  # (B,)
        dist = torch.nn.functional.pairwise_distance(x, x[nearest], p=2, eps=eps)  # (B,)
        return -torch.log(dist + eps).mean()
