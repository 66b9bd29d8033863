"""Teacher output centering: EMA softmax centering and Sinkhorn-Knopp, both all-reduced under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["SoftmaxCenter", "all_reduce_sum", "sinkhorn_knopp"]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks in place when a process group is running; identity otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
    return x


class SoftmaxCenter(nn.Module):
    """DINO's centering: softmax((t - c) / temp), with c an EMA of the batch-mean teacher logits."""

    center: torch.Tensor

    def __init__(self, n_prototypes: int, *, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, n_prototypes))

    @torch.no_grad()
    def probs(self, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
        """(N, K) logits -> (N, K) centred, sharpened probabilities (fp32)."""
        return torch.softmax((teacher_logits.float() - self.center) / temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """EMA step towards the mean of (N, K) logits over all ranks' samples."""
        total = all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        count = all_reduce_sum(torch.tensor(float(teacher_logits.shape[0]), device=total.device))
        batch_center = total / count.clamp(min=1.0)
        moved = self.center * self.momentum + batch_center * (1.0 - self.momentum)
        # No sample on any rank (no masked token this step): the centre stays, without a sync.
        self.center.copy_(torch.where(count > 0, moved, self.center))


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, *, n_iters: int = 3) -> torch.Tensor:
    """Balanced soft assignment of N samples to K prototypes (SwAV / DINOv2 centering).

    Alternates giving every prototype the same total mass (sums over all ranks' samples)
    and making every sample's row sum to 1. DINOv2 also divides by the grand total first,
    by K and N inside the loop and multiplies by N at the end; the prototype step is blind
    to any overall scale, so those passes over the (N, K) matrix change nothing but the
    rounding and are left out, as is DINOv2's all-reduce of N.

    Args:
        teacher_logits: (N, K) this rank's teacher logits; N may be 0 on some ranks.
        temp: teacher temperature.
        n_iters: normalisation rounds (3 in DINOv2).

    Returns:
        (N, K) fp32 targets.
    """
    q = teacher_logits.float() / temp  # (N, K), a fresh tensor: normalised in place below
    q.exp_()
    for _ in range(n_iters):
        q /= all_reduce_sum(q.sum(dim=0, keepdim=True))  # (1, K) prototype mass, all ranks
        q /= q.sum(dim=1, keepdim=True)  # (N, 1): each sample is one rank's
    return q
