"""Tests for the DINO, iBOT and KoLeo losses and the two teacher centerings, on hand-worked values."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unipipe.ssl.losses import (
    SoftmaxCenter,
    dino_cls_loss,
    ibot_patch_loss,
    koleo_loss,
    sinkhorn_knopp,
)

from . import centering_worker


def test_dino_cls_loss_hand_worked_pairs():
    """Globals are crossed (never their own teacher view) and locals meet both teacher views."""
    s0, s1, local = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2)
    t0, t1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])
    only_globals = dino_cls_loss([s0, s1], [t0, t1], student_temp=1.0)
    assert only_globals.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    with_local = dino_cls_loss([s0, s1, local], [t0, t1], student_temp=1.0)
    assert with_local.item() == pytest.approx((3 * math.log(2) + math.log(4 / 3)) / 4)


def test_dino_cls_loss_student_temperature_sharpens():
    """Dividing the student logits by 0.1 is the same as multiplying them by 10 at temp 1."""
    s = [torch.randn(4, 8) for _ in range(3)]
    t = [torch.softmax(torch.randn(4, 8), -1) for _ in range(2)]
    a = dino_cls_loss(s, t, student_temp=0.1)
    b = dino_cls_loss([x * 10 for x in s], t, student_temp=1.0)
    torch.testing.assert_close(a, b)


def test_ibot_patch_loss_weights_each_image_once():
    """Tokens are weighted 1/(masked tokens of their image); the sum is over all global images."""
    logits = torch.zeros(3, 2)  # tokens: image 0 has 1 masked token, image 1 has 2
    target = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    weights = torch.tensor([1.0, 0.5, 0.5])
    loss = ibot_patch_loss(logits, target, weights, n_images=4, student_temp=1.0)
    assert loss.item() == pytest.approx(2 * math.log(2) / 4)


def test_ibot_patch_loss_no_masked_tokens_is_zero():
    """An empty selection gives a zero (not NaN) loss."""
    empty = torch.zeros(0, 5)
    assert ibot_patch_loss(empty, empty, torch.zeros(0), n_images=4).item() == 0.0


def test_koleo_loss_hand_worked_and_scale_free():
    """Points at 0, 90 and 180 degrees all have nearest neighbours sqrt(2) away."""
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    assert koleo_loss(x).item() == pytest.approx(-0.5 * math.log(2), abs=1e-6)


@pytest.mark.parametrize(
    ("x", "expected_zero"),
    [(torch.randn(1, 8), True), (torch.ones(2, 8), False), (torch.zeros(3, 8), False)],
)
def test_koleo_loss_finite_for_tiny_or_degenerate_batches(x, expected_zero):
    """One sample gives 0; duplicates or zero vectors stay finite; the result is fp32."""
    loss = koleo_loss(x.to(torch.bfloat16))
    assert torch.isfinite(loss)
    assert loss.dtype == torch.float32
    assert (loss.item() == 0.0) == expected_zero


def test_softmax_center_probs_and_ema_update():
    """probs = softmax((t - c) / temp); c <- 0.9 c + 0.1 batch mean."""
    center = SoftmaxCenter(2, momentum=0.9)
    logits = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    torch.testing.assert_close(center.probs(logits, 0.5), torch.softmax(logits / 0.5, -1))
    center.update(logits)
    torch.testing.assert_close(center.center, torch.tensor([[0.2, 0.4]]))
    shifted = center.probs(torch.tensor([[0.2, 0.4]]), 1.0)
    torch.testing.assert_close(shifted, torch.tensor([[0.5, 0.5]]))


def test_sinkhorn_knopp_balances_identical_samples():
    """Two identical samples preferring prototype 0 (3:1) are split evenly, unlike a softmax."""
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    torch.testing.assert_close(sinkhorn_knopp(logits, 1.0, n_iters=3), torch.full((2, 2), 0.5))


def test_sinkhorn_knopp_row_and_column_sums():
    """Each sample's target sums to 1 and prototypes approach equal mass N / K."""
    torch.manual_seed(0)
    logits = torch.randn(64, 16)
    q = sinkhorn_knopp(logits, 0.5, n_iters=3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64))
    assert (q.sum(dim=0) - 4.0).abs().max() < 0.5
    q_many = sinkhorn_knopp(logits, 0.5, n_iters=100)
    torch.testing.assert_close(q_many.sum(dim=0), torch.full((16,), 4.0), atol=1e-3, rtol=0)


def _sinkhorn_as_dinov2_writes_it(logits: torch.Tensor, temp: float, n_iters: int) -> torch.Tensor:
    """DINOv2's single-process Sinkhorn-Knopp, step for step, as a plain reference."""
    q = torch.exp(logits.double() / temp).t()  # (K, N)
    n_protos, n_samples = q.shape
    q = q / q.sum()
    for _ in range(n_iters):
        q = q / q.sum(dim=1, keepdim=True) / n_protos
        q = q / q.sum(dim=0, keepdim=True) / n_samples
    return (q * n_samples).t()


@pytest.mark.parametrize(("n_samples", "n_protos", "temp"), [(64, 16, 0.5), (7, 1000, 0.04)])
def test_sinkhorn_knopp_matches_dinov2_formula(n_samples, n_protos, temp):
    """Leaving out DINOv2's scale-only passes gives its targets to fp32 rounding."""
    torch.manual_seed(0)
    logits = torch.rand(n_samples, n_protos) * 2.0 - 1.0  # cosines, like the head's logits
    expected = _sinkhorn_as_dinov2_writes_it(logits, temp, n_iters=3).float()
    torch.testing.assert_close(sinkhorn_knopp(logits, temp, n_iters=3), expected)


def test_sinkhorn_knopp_no_samples_gives_empty_targets():
    """A rank without masked tokens gets (0, K) targets and no NaN (it still all-reduces)."""
    q = sinkhorn_knopp(torch.zeros(0, 8), 0.04)
    assert q.shape == (0, 8)


def test_softmax_center_update_without_samples_keeps_center():
    """A step with no sample on any rank (no masked token) leaves the centre where it was."""
    center = SoftmaxCenter(2, momentum=0.9)
    center.update(torch.tensor([[1.0, 3.0]]))
    before = center.center.clone()
    center.update(torch.zeros(0, 2))
    torch.testing.assert_close(center.center, before)


@pytest.fixture(scope="module")
def two_rank_centering(tmp_path_factory) -> list[dict[str, list[torch.Tensor]]]:
    """Each rank's centres and Sinkhorn targets from centering_worker.py (2 gloo processes)."""
    tmp = tmp_path_factory.mktemp("centering")
    worker = Path(__file__).with_name("centering_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(tmp / "init"), str(r), str(tmp / f"{r}.pt")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output.decode()[-3000:]
    return [torch.load(tmp / f"{r}.pt") for r in (0, 1)]


def test_softmax_center_two_ranks_equals_one_process(two_rank_centering):
    """Under DDP the centre moves towards the mean over every rank's rows, as one process
    would over the concatenated rows, also when one rank (or both) has none that step."""
    reference = SoftmaxCenter(centering_worker.N_PROTOTYPES, momentum=centering_worker.MOMENTUM)
    for step in range(len(centering_worker.SPLITS)):
        reference.update(centering_worker.step_logits(step))
        for rank in (0, 1):
            got = two_rank_centering[rank]["centers"][step]
            torch.testing.assert_close(got, reference.center, msg=f"rank {rank} step {step}")
    assert not torch.equal(reference.center, torch.zeros_like(reference.center))


def test_sinkhorn_knopp_two_ranks_equals_one_process(two_rank_centering):
    """Each rank's targets are its rows of one process's targets over the concatenated rows:
    the prototype masses are summed over ranks, a rank with no rows included."""
    w = centering_worker
    for step, (n0, _) in enumerate(w.SPLITS):
        whole = sinkhorn_knopp(w.step_logits(step), w.TEMP, n_iters=w.SK_ITERS)
        for rank, rows in enumerate((whole[:n0], whole[n0:])):
            got = two_rank_centering[rank]["targets"][step]
            torch.testing.assert_close(got, rows, msg=f"rank {rank} step {step}")
