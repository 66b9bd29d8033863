"""Periodic checkpoints: every ``checkpoint.every_n_steps`` steps, the newest ``keep_last`` kept."""

from __future__ import annotations

import pytest
import torch

from .test_train import _run

# A one-block model with small heads: the checkpoints hold student, teacher and AdamW
# moments, and this test saves up to six of them.
SMALL = {
    "model.kwargs": {"img_size": 112, "depth": 1, "init_values": 0.1},
    "heads.n_prototypes": 64,
    "heads.hidden_dim": 64,
    "heads.bottleneck_dim": 32,
    "heads.ibot_n_prototypes": 64,
    "schedule.total_steps": 5,
}


def _step(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.parametrize(
    ("every", "keep", "periodic"),
    [
        (1, 2, [4, 5]),  # saved at 1..5, the two newest kept
        (2, 2, [2, 4]),  # step 5 is off the period: only last.ckpt holds it
        (1, 0, []),  # keep_last 0: last.ckpt alone
    ],
)
def test_periodic_checkpoints_keep_the_newest(shard_index, tmp_path, every, keep, periodic):
    """Over 5 steps, exactly the ``keep`` newest periodic checkpoints stay, each named by the
    step it holds, plus last.ckpt at the final step."""
    _run(
        shard_index,
        tmp_path,
        {**SMALL, "checkpoint.every_n_steps": every, "checkpoint.keep_last": keep},
    )
    ckpts = tmp_path / "checkpoints"
    expected = sorted(f"step{s:07d}.ckpt" for s in periodic) + ["last.ckpt"]
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(expected)
    for step in periodic:
        assert _step(ckpts / f"step{step:07d}.ckpt") == step
    assert _step(ckpts / "last.ckpt") == 5
