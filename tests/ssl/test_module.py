"""Tests for the DINOv2 LightningModule: losses on a real batch, EMA, loss switches, NaN guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unipipe.ssl.augment import MultiCrop
from unipipe.ssl.backbone import _plain_attention
from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.data import MultiCropCollate, MultiCropDataset, PretrainDataModule, open_patches
from unipipe.ssl.losses import dino_cls_loss, ibot_patch_loss, sinkhorn_knopp
from unipipe.ssl.module import DINOv2Module, TrainingDivergedError, apply_schedules
from unipipe.ssl.train import build_trainer

from .conftest import TINY_YAML

SMALL = {"data.batch_size": 4, "crops.n_local": 2, "heads.n_prototypes": 64, "heads.hidden_dim": 64}


def _batch(shard_index, cfg: PretrainConfig, n: int = 4) -> dict[str, torch.Tensor]:
    patches = open_patches(shard_index)
    transform = MultiCrop(cfg.crops, cfg.augment, mean=cfg.model.mean, std=cfg.model.std)
    dataset = MultiCropDataset(patches, transform, seed=0)
    collate = MultiCropCollate(cfg, seed=0, global_batch=n, global_size=cfg.crops.global_size)
    return collate([dataset[(i, i)] for i in range(n)])


@pytest.mark.parametrize(
    ("weights", "zero_terms"),
    [
        ({}, []),
        ({"loss.ibot_weight": 0.0}, ["ibot"]),
        ({"loss.koleo_weight": 0.0, "loss.dino_weight": 0.0}, ["koleo", "dino"]),
        ({"heads.ibot_separate_head": True, "heads.ibot_n_prototypes": 32}, []),
        ({"loss.centering": "softmax"}, []),
    ],
)
def test_compute_losses_term_off_when_weight_zero(shard_index, weights, zero_terms):
    """Each loss is computed when its weight is positive and exactly 0 when its weight is 0."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, {**SMALL, **weights})
    module = DINOv2Module(cfg, global_batch=4)
    losses = module.compute_losses(_batch(shard_index, cfg), step=0)
    for name in ("dino", "ibot", "koleo"):
        assert (float(losses[name]) == 0.0) == (name in zero_terms), name
    assert torch.isfinite(losses["total"])
    assert losses["total"].requires_grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compute_losses_dino_near_log_k_at_init(shard_index, seed):
    """At init the student is near-uniform over K prototypes, so the DINO loss is about log K.

    Not exactly: cosine logits at student temperature 0.1 spread over +-10, which puts the
    cross-entropy 8-12% above log K (4.50-4.65 for K = 64 over seeds 0-5). The init is
    seeded: unseeded, the test passed or failed with the order the tests ran in.
    """
    kwargs = {"img_size": 112, "depth": 4, "init_values": 1e-5}  # UNI's LayerScale start
    cfg = PretrainConfig.from_yaml(TINY_YAML, {**SMALL, "model.kwargs": kwargs})
    torch.manual_seed(seed)
    module = DINOv2Module(cfg, global_batch=4)
    losses = module.compute_losses(_batch(shard_index, cfg), step=0)
    log_k = float(torch.log(torch.tensor(64.0)))
    assert log_k <= float(losses["dino"]) < 1.15 * log_k


def test_update_teacher_is_ema_of_student():
    """teacher <- m * teacher + (1 - m) * student for every parameter."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, SMALL)
    module = DINOv2Module(cfg, global_batch=4)
    with torch.no_grad():
        for p in module.student.parameters():
            p.add_(1.0)
    before_t = [p.clone() for p in module.teacher.parameters()]
    student = [p.clone() for p in module.student.parameters()]
    module.update_teacher(0.9)
    for t0, s, t1 in zip(before_t, student, module.teacher.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)
    assert not any(p.requires_grad for p in module.teacher.parameters())


class _DivergingModule(DINOv2Module):
    """Returns a NaN iBOT term from step 2 on."""

    def compute_losses(self, batch, step):
        losses = super().compute_losses(batch, step)
        if step >= 2:
            losses["ibot"] = losses["ibot"] * float("nan")
            losses["total"] = losses["total"] + losses["ibot"]
        return losses


def test_training_step_nan_stops_naming_step_and_term(shard_index, tmp_path):
    """A NaN term raises TrainingDivergedError naming it; the last good checkpoint stays."""
    cfg = PretrainConfig.from_yaml(
        TINY_YAML,
        {**SMALL, "schedule.total_steps": 5, "checkpoint.every_n_steps": 1, "data.num_workers": 0},
    )
    trainer = build_trainer(cfg, out_dir=tmp_path, max_steps=5, metrics_path=tmp_path / "m.csv")
    data = PretrainDataModule(shard_index, config=cfg, seed=0, total_steps=5)
    with pytest.raises(TrainingDivergedError, match=r"ibot=nan.* at step 2"):
        trainer.fit(_DivergingModule(cfg, global_batch=4), datamodule=data)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2


def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's NaN term stops rank 0 too, in the same step (2 gloo processes)."""
    worker = Path(__file__).with_name("finite_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(tmp_path / "init"), str(r), str(tmp_path / f"{r}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output.decode()[-3000:]
    rank0, rank1 = ((tmp_path / f"{r}").read_text() for r in (0, 1))
    assert "on another rank at step 7" in rank0
    assert "ibot=nan, total=nan at step 7" in rank1


def test_prototype_layer_frozen_in_first_epoch_by_lr_zero():
    """During freeze_last_layer_epochs the prototype layers get lr 0, as in DINOv2: AdamW
    keeps their moments but moves neither them nor (decoupled decay) their norm; every
    other group follows lr(step) x its multiplier, and the prototypes do after the freeze."""
    cfg = PretrainConfig.from_yaml(
        TINY_YAML, {**SMALL, "schedule.steps_per_epoch": 3, "schedule.warmup_epochs": 0}
    )
    module = DINOv2Module(cfg, global_batch=4)
    optimizer = module.configure_optimizers()
    protos = module.student["dino_head"].last_layer.parametrizations.weight.original1
    cls_token = module.student["backbone"].vit.cls_token
    for p in module.student.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    apply_schedules(optimizer, module.schedules, step=2)  # last step of the first epoch
    lr = module.schedules.lr(2)
    for group in optimizer.param_groups:
        expected = 0.0 if group["is_last_layer"] else lr * group["lr_mult"]
        assert group["lr"] == pytest.approx(expected)
    assert any(group["is_last_layer"] for group in optimizer.param_groups)
    before, cls_before = protos.detach().clone(), cls_token.detach().clone()
    optimizer.step()
    torch.testing.assert_close(protos.detach(), before, rtol=0, atol=0)
    assert not torch.equal(cls_token.detach(), cls_before)
    assert optimizer.state[protos]["exp_avg"].abs().sum() > 0  # moments still accumulate
    apply_schedules(optimizer, module.schedules, step=3)
    last = [g for g in optimizer.param_groups if g["is_last_layer"]]
    assert all(g["lr"] == pytest.approx(module.schedules.lr(3) * g["lr_mult"]) for g in last)
    optimizer.step()
    assert not torch.equal(protos.detach(), before)


def test_train_mode_keeps_teacher_in_eval():
    """module.train() (called by Lightning) leaves the teacher in eval mode: no drop path."""
    module = DINOv2Module(PretrainConfig.from_yaml(TINY_YAML, SMALL), global_batch=4).train()
    assert module.student.training
    assert not any(m.training for m in module.teacher.modules())


def _count_calls(module: torch.nn.Module) -> list[int]:
    rows: list[int] = []
    module.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    return rows


def test_compute_losses_one_head_pass_per_model_matches_per_crop_heads(shard_index):
    """Student and teacher heads run once on CLS + masked tokens; losses equal per-group heads."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, {**SMALL, "model.drop_path_rate": 0.0})
    module = DINOv2Module(cfg, global_batch=4).train()
    batch = _batch(shard_index, cfg)
    masks = batch["masks"]
    student_rows = _count_calls(module.student["dino_head"])
    teacher_rows = _count_calls(module.teacher["dino_head"])
    losses = module.compute_losses(batch, step=0)

    n_masked = int(masks.sum())
    assert n_masked > 0
    assert student_rows == [8 + 8 + n_masked]  # 2x4 global CLS, 2x4 local CLS, masked patches
    assert teacher_rows == [8 + n_masked]

    # The same losses with a head call per crop group (what the code did before).
    temp = module.schedules.teacher_temp(0)
    student, teacher = module.student, module.teacher
    with torch.no_grad():
        t_out = teacher["backbone"](batch["global_crops"])
        t_cls = sinkhorn_knopp(teacher["dino_head"](t_out.cls), temp)
        t_patch = sinkhorn_knopp(teacher["dino_head"](t_out.patch[masks]), temp)
    s_g = student["backbone"](batch["global_crops"], masks)
    s_l = student["backbone"](batch["local_crops"])
    s_logits = [*student["dino_head"](s_g.cls).chunk(2), *student["dino_head"](s_l.cls).chunk(2)]
    dino = dino_cls_loss(s_logits, list(t_cls.chunk(2)), student_temp=0.1)
    weights = (1.0 / masks.sum(dim=1).clamp(min=1.0)).unsqueeze(1).expand_as(masks)[masks]
    s_patch = student["dino_head"](s_g.patch[masks])
    ibot = ibot_patch_loss(s_patch, t_patch, weights, n_images=8, student_temp=0.1)
    torch.testing.assert_close(losses["dino"], dino, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["ibot"], ibot, rtol=1e-5, atol=1e-5)


def test_compute_losses_no_masked_crop_still_centres_ibot(shard_index):
    """A batch without masked crops gives iBOT 0 but still runs the iBOT centering (DDP)."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, SMALL)
    module = DINOv2Module(cfg, global_batch=4)
    batch = _batch(shard_index, cfg)
    batch["masks"] = torch.zeros_like(batch["masks"])
    rows: list[int] = []
    real_targets = module._targets

    def counting_targets(logits, center, temp):
        rows.append(logits.shape[0])
        return real_targets(logits, center, temp)

    module._targets = counting_targets
    losses = module.compute_losses(batch, step=0)
    assert rows == [8, 0]  # DINO targets of 2x4 CLS tokens, then iBOT targets of 0 tokens
    assert float(losses["ibot"]) == 0.0
    assert torch.isfinite(losses["total"])


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None]


def _part_norms(module: DINOv2Module) -> dict[str, float]:
    return {
        name: float(torch.nn.utils.get_total_norm(_grads(part)))
        for name, part in module.student.items()
    }


@pytest.mark.parametrize(
    ("precision", "fused"), [("32-true", True), ("bf16-mixed", True), ("16-mixed", False)]
)
def test_gradient_clipping_caps_each_student_part(shard_index, precision, fused):
    """Backbone and head gradients are clipped to optim.clip_grad each on their own.

    As in DINOv2: one norm over the whole student would let the head's larger gradients
    shrink a backbone step that is under the limit. Lightning's own clipping refuses the
    fused AdamW under bf16 and norm clipping under FSDP, so the module clips itself; with
    fp16 Lightning unscales the gradients before this hook.
    """
    cfg = PretrainConfig.from_yaml(TINY_YAML, {**SMALL, "trainer.precision": precision})
    module = DINOv2Module(cfg, global_batch=4)
    optimizer = module.configure_optimizers()
    assert bool(optimizer.defaults["fused"]) is fused
    module.compute_losses(_batch(shard_index, cfg), step=0)["total"].backward()
    backbone = module.student["backbone"]
    with torch.no_grad():  # head far over the limit, backbone under it
        head_scale = 1e3 / _part_norms(module)["dino_head"]
        for g in _grads(module.student["dino_head"]):
            g.mul_(head_scale)
        scale = 0.5 / _part_norms(module)["backbone"]
        for g in _grads(backbone):
            g.mul_(scale)
    before = [g.clone() for g in _grads(backbone)]
    module.configure_gradient_clipping(optimizer, 1.0, "norm")
    norms = _part_norms(module)
    assert norms["dino_head"] == pytest.approx(1.0, rel=1e-4)
    for b, g in zip(before, _grads(backbone), strict=True):
        torch.testing.assert_close(g, b, rtol=0, atol=0)  # under the limit: untouched
    module.configure_gradient_clipping(optimizer, 0.0, "norm")  # 0 = no clipping
    assert _part_norms(module)["dino_head"] == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("clip", [3.0, 0.0])
def test_non_finite_gradient_stops_before_the_optimiser_step(clip):
    """A NaN gradient with finite losses stops training, naming the student part and step;
    clipping would otherwise spread it over the part (NaN norm) and AdamW write it into
    the weights that the next checkpoint saves."""
    module = DINOv2Module(PretrainConfig.from_yaml(TINY_YAML, SMALL), global_batch=4)
    optimizer = module.configure_optimizers()
    for p in module.student.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    module.student["backbone"].vit.cls_token.grad[0, 0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"backbone=nan.* at step 0"):
        module.configure_gradient_clipping(optimizer, clip, "norm")


def test_non_finite_gradient_keeps_the_last_good_checkpoint(shard_index, tmp_path):
    """Through Lightning: the step with a NaN gradient raises and is not saved."""

    class _NanGradient(DINOv2Module):
        def on_after_backward(self) -> None:
            if self.global_step >= 2:
                self.student["dino_head"].mlp[0].weight.grad.fill_(float("nan"))

    cfg = PretrainConfig.from_yaml(
        TINY_YAML,
        {**SMALL, "schedule.total_steps": 5, "checkpoint.every_n_steps": 1, "data.num_workers": 0},
    )
    trainer = build_trainer(cfg, out_dir=tmp_path, max_steps=5, metrics_path=tmp_path / "m.csv")
    data = PretrainDataModule(shard_index, config=cfg, seed=0, total_steps=5)
    with pytest.raises(TrainingDivergedError, match=r"dino_head=nan.* at step 2"):
        trainer.fit(_NanGradient(cfg, global_batch=4), datamodule=data)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2
    weights = last["state_dict"]["student.dino_head.mlp.0.weight"]
    assert torch.isfinite(weights).all()


@pytest.mark.parametrize("crops", ["global_crops", "local_crops"])
def test_backbone_select_equals_full_pass_at_selected_tokens(shard_index, crops):
    """The last block computed only at CLS + selected patches (iBOT's masked ones, or none
    for the local crops) gives the full pass's outputs and parameter gradients there, with
    drop path's batch subsets drawn alike (train mode, rate 0.3 in every block)."""
    cfg = PretrainConfig.from_yaml(
        TINY_YAML, {**SMALL, "model.drop_path_rate": 0.3, "model.drop_path_uniform": True}
    )
    backbone = DINOv2Module(cfg, global_batch=4).student["backbone"].train()
    assert _plain_attention(backbone.vit.blocks[-1].attn)  # the token-selected path runs
    batch = _batch(shard_index, cfg)
    images = batch[crops]
    if crops == "global_crops":
        masks = select = batch["masks"]
        assert 0 < int(select.sum()) < select.numel() // 2
    else:
        masks, select = None, torch.zeros(images.shape[0], 9, dtype=torch.bool)

    def run(**kwargs):
        torch.manual_seed(3)
        backbone.zero_grad(set_to_none=True)
        out = backbone(images, masks, **kwargs)
        patch = out.patch if "select" in kwargs else out.patch[select]
        (out.cls.square().sum() + patch.sin().sum()).backward()
        grads = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
        return out.cls.detach(), patch.detach(), grads

    cls_full, patch_full, grads_full = run()
    cls_sel, patch_sel, grads_sel = run(select=select)
    torch.testing.assert_close(cls_sel, cls_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patch_sel, patch_full, rtol=1e-5, atol=1e-5)
    assert grads_sel.keys() == grads_full.keys()
    for name in grads_full:
        # float sums in another order: tolerance relative to the gradient's own scale
        scale = float(grads_full[name].abs().max().clamp(min=1.0))
        torch.testing.assert_close(
            grads_sel[name], grads_full[name], rtol=1e-4, atol=2e-5 * scale, msg=name
        )
