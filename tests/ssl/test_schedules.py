"""Tests for the per-iteration lr, weight-decay, momentum and teacher-temperature schedules."""

from __future__ import annotations

import math

import pytest

from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.schedules import Schedules, cosine_schedule, scaled_lr

from .conftest import UNI_YAML


@pytest.fixture(scope="module")
def uni() -> Schedules:
    """UNI's schedules at its global batch of 3072."""
    return Schedules(config=PretrainConfig.from_yaml(UNI_YAML), global_batch=3072)


def test_scaled_lr_square_root_rule():
    """lr = base_lr * sqrt(global_batch / 1024)."""
    assert scaled_lr(0.004, 4096) == pytest.approx(0.008)
    assert scaled_lr(0.004, 3072) == pytest.approx(0.004 * math.sqrt(3))


def test_lr_warmup_then_cosine_end_points(uni):
    """0 at step 0, the peak after 10 epochs of 1250 steps, min_lr at the last step."""
    peak = scaled_lr(uni.config.optim.base_lr, 3072)
    assert uni.lr(0) == 0.0
    assert uni.lr(6250) == pytest.approx(peak / 2)
    assert uni.lr(12_500) == pytest.approx(peak)
    assert uni.lr(124_999) == pytest.approx(uni.config.optim.min_lr)
    assert uni.lr(12_500) > uni.lr(60_000) > uni.lr(120_000)


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [("weight_decay", 0.04, 0.4), ("momentum", 0.992, 1.0)],
)
def test_cosine_schedules_end_points(uni, name, first, last):
    """Weight decay rises 0.04 -> 0.4 and teacher momentum 0.992 -> 1.0 over the run."""
    schedule = getattr(uni, name)
    assert schedule(0) == pytest.approx(first)
    assert schedule(124_999) == pytest.approx(last)
    assert schedule(62_500) == pytest.approx((first + last) / 2, rel=1e-3)


def test_teacher_temp_warmup_over_30_epochs(uni):
    """0.04 at start, linear to 0.07 at epoch 30 (37,500 steps), constant afterwards."""
    assert uni.teacher_temp(0) == pytest.approx(0.04)
    assert uni.teacher_temp(18_750) == pytest.approx(0.055)
    assert uni.teacher_temp(37_500) == pytest.approx(0.07)
    assert uni.teacher_temp(100_000) == pytest.approx(0.07)


def test_last_layer_frozen_for_first_epoch(uni):
    """The prototypes are frozen for steps 0..1249 only."""
    assert uni.last_layer_frozen(1249)
    assert not uni.last_layer_frozen(1250)


def test_cosine_schedule_holds_end_after_total():
    """Past the last step the value stays at the end point."""
    assert cosine_schedule(500, start=1.0, end=0.1, total_steps=100) == pytest.approx(0.1)
