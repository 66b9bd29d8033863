"""iBOT loss: student masked patch tokens against the teacher's unmasked ones, weighted per image."""

from __future__ import annotations

import torch

__all__ = ["ibot_patch_loss"]


def ibot_patch_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    token_weights: torch.Tensor,
    *,
    n_images: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """DINOv2's masked-patch loss.

    Every masked token is weighted by 1 / (masked tokens in its image), so each masked image
    counts once whatever its mask size; the sum is divided by all global-crop images
    (masked or not).

    Args:
        student_logits: (M, K) student logits of the M masked tokens in the batch.
        teacher_probs: (M, K) centred teacher distributions of the same tokens.
        token_weights: (M,) 1 / masked-token count of each token's image.
        n_images: global-crop images in the batch, B * n_global.
        student_temp: student softmax temperature.
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p = torch.log_softmax(student_logits.float() / student_temp, dim=-1)  # (M, K)
    per_token = (teacher_probs * log_p).sum(dim=-1)  # (M,)
    return -(per_token * token_weights).sum() / n_images
