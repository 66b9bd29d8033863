"""DINO CLS loss: cross-entropy of student crops against the teacher's other global crops."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["dino_cls_loss"]


def dino_cls_loss(
    student_logits: Sequence[torch.Tensor],
    teacher_probs: Sequence[torch.Tensor],
    *,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Mean over (student crop v, teacher global u), v != u, of batch-mean H(t_u, s_v).

    Args:
        student_logits: one (B, K) tensor per crop, the global crops first, then the locals.
        teacher_probs: one (B, K) centred teacher distribution per global crop.
        student_temp: student softmax temperature.

    Returns:
        Scalar loss; a student global crop is never compared with its own teacher view.
    """
    total = student_logits[0].new_zeros((), dtype=torch.float32)
    n_terms = 0
    for v, logits in enumerate(student_logits):
        log_p = torch.log_softmax(logits.float() / student_temp, dim=-1)  # (B, K)
        for u, target in enumerate(teacher_probs):
            if u == v:
                continue
            total = total - (target * log_p).sum(dim=-1).mean()
            n_terms += 1
    return total / max(n_terms, 1)
