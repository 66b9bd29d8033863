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
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, *, n_iters: int = 3) -> torch.Tensor:
    """Balanced soft assignment of N samples to K prototypes (SwAV / DINOv2 centering).

    Alternates normalising prototype marginals to 1/K and sample marginals to 1/N, with N
    and the sums taken over all ranks. Each returned row sums to 1.

    Args:
        teacher_logits: (N, K) this rank's teacher logits.
        temp: teacher temperature.
        n_iters: normalisation rounds (3 in DINOv2).

    Returns:
        (N, K) fp32 targets.
    """
    q = torch.exp(teacher_logits.float() / temp).t()  # (K, N)
    n_samples = all_reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))
    n_protos = q.shape[0]
    q /= all_reduce_sum(q.sum())
    for _ in range(n_iters):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # prototype marginals (all ranks)
        q /= n_protos
        q /= q.sum(dim=0, keepdim=True)  # sample marginals (local: each sample is one rank's)
        q /= n_samples
    q *= n_samples
    return q.t()
