"""Per-iteration schedules: linear warm-up then cosine, as DINOv2 uses for lr, wd, momentum, temp."""

from __future__ import annotations

import dataclasses
import math

from unipipe.ssl.config import PretrainConfig

__all__ = ["Schedules", "cosine_schedule", "linear_then_constant", "scaled_lr"]


def cosine_schedule(
    step: int,
    *,
    start: float,
    end: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> float:
    """Value at optimiser step ``step`` (0-based).

    Linear from ``warmup_start`` to ``start`` over ``warmup_steps``, then a half cosine from
    ``start`` to ``end`` reached at ``total_steps - 1``; held at ``end`` afterwards.
    """
    if step < warmup_steps:
        return warmup_start + (start - warmup_start) * step / warmup_steps
    span = max(total_steps - 1 - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def linear_then_constant(step: int, *, start: float, end: float, ramp_steps: int) -> float:
    """Linear from ``start`` to ``end`` over ``ramp_steps``, then ``end`` (teacher temperature)."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return end
    return start + (end - start) * step / ramp_steps


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """DINOv2's square-root scaling: ``base_lr * sqrt(global_batch / 1024)``."""
    return base_lr * math.sqrt(global_batch / 1024)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schedules:
    """All per-step values of one run; ``global_batch`` is images per optimiser step, all ranks."""

    config: PretrainConfig
    global_batch: int

    @property
    def _spe(self) -> int:
        return self.config.schedule.steps_per_epoch

    def lr(self, step: int) -> float:
        """Peak-scaled learning rate at ``step`` (before layer-wise multipliers)."""
        sched, optim = self.config.schedule, self.config.optim
        peak = scaled_lr(optim.base_lr, self.global_batch)
        return cosine_schedule(
            step,
            start=peak,
            end=optim.min_lr,
            total_steps=sched.total_steps,
            warmup_steps=int(sched.warmup_epochs * self._spe),
        )

    def weight_decay(self, step: int) -> float:
        """Weight decay at ``step`` (cosine 0.04 -> 0.4 in UNI's recipe)."""
        optim = self.config.optim
        return cosine_schedule(
            step,
            start=optim.weight_decay,
            end=optim.weight_decay_end,
            total_steps=self.config.schedule.total_steps,
        )

    def momentum(self, step: int) -> float:
        """Teacher EMA momentum at ``step`` (cosine 0.992 -> 1.0)."""
        start, end = self.config.schedule.momentum
        return cosine_schedule(
            step, start=start, end=end, total_steps=self.config.schedule.total_steps
        )

    def teacher_temp(self, step: int) -> float:
        """Teacher softmax temperature at ``step`` (linear warm-up, then constant)."""
        start, end = self.config.schedule.teacher_temp
        ramp = int(self.config.schedule.teacher_temp_warmup_epochs * self._spe)
        return linear_then_constant(step, start=start, end=end, ramp_steps=ramp)

    def last_layer_frozen(self, step: int) -> bool:
        """Whether the prototype layers get no update at ``step``."""
        return step < int(self.config.schedule.freeze_last_layer_epochs * self._spe)
