"""The DINOv2 LightningModule: student and EMA teacher, DINO + iBOT + KoLeo losses, schedules."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import lightning as L
import torch
from torch import nn

from unipipe.errors import UnipipeError
from unipipe.models import build_vit
from unipipe.ssl.augment import crop_roles, normalize
from unipipe.ssl.backbone import MaskedViT
from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.heads import DINOHead
from unipipe.ssl.losses import (
    SoftmaxCenter,
    dino_cls_loss,
    ibot_patch_loss,
    koleo_loss,
    sinkhorn_knopp,
)
from unipipe.ssl.losses.centering import all_reduce_sum
from unipipe.ssl.masking import seeded_generator
from unipipe.ssl.optim import param_groups
from unipipe.ssl.photometric import photometric
from unipipe.ssl.schedules import Schedules

logger = logging.getLogger(__name__)

__all__ = [
    "DINOv2Module",
    "TrainingDivergedError",
    "apply_schedules",
    "build_student",
    "check_finite_losses",
]


class TrainingDivergedError(UnipipeError, FloatingPointError):
    """A loss became NaN or infinite; the message names the step and the loss term."""


def build_student(config: PretrainConfig) -> nn.ModuleDict:
    """Backbone (timm ViT, drop path done by :class:`MaskedViT`), DINO head, optional iBOT head."""
    m, h = config.model, config.heads
    vit = build_vit(m.arch, **m.kwargs, drop_path_rate=0.0)
    backbone = MaskedViT(
        vit, drop_path_rate=m.drop_path_rate, drop_path_uniform=m.drop_path_uniform, sdpa=m.sdpa
    )
    head_kw = {
        "hidden_dim": h.hidden_dim,
        "bottleneck_dim": h.bottleneck_dim,
        "n_layers": h.n_layers,
    }
    student = nn.ModuleDict(
        {
            "backbone": backbone,
            "dino_head": DINOHead(backbone.embed_dim, n_prototypes=h.n_prototypes, **head_kw),
        }
    )
    if h.ibot_separate_head and config.loss.ibot_weight > 0:
        student["ibot_head"] = DINOHead(
            backbone.embed_dim, n_prototypes=h.ibot_n_prototypes, **head_kw
        )
    return student


def check_finite_losses(losses: dict[str, torch.Tensor], step: int) -> None:
    """Raise on every rank when any rank has a NaN or infinite loss term.

    All ranks stop together: a rank that stopped alone would leave the others waiting in the
    gradient all-reduce until the process group times out.

    Raises:
        TrainingDivergedError: naming the step and this rank's non-finite terms.
    """
    values = torch.stack([v.detach().float() for v in losses.values()])
    n_bad = all_reduce_sum((~torch.isfinite(values)).sum().float())  # one device sync
    if float(n_bad) > 0:
        bad = [f"{k}={float(v)}" for k, v in losses.items() if not math.isfinite(float(v))]
        where = ", ".join(bad) if bad else "on another rank"
        raise TrainingDivergedError(
            f"non-finite loss term(s) {where} at step {step}; training stopped and "
            "the last good checkpoint is kept (lower optim.base_lr or check the data)"
        )


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(tensor, "full_tensor", None)  # a DTensor under FSDP2
    return full_tensor() if full_tensor is not None else tensor


def apply_schedules(optimizer: torch.optim.Optimizer, schedules: Schedules, step: int) -> None:
    """Set every parameter group's lr and weight decay for optimiser step ``step``.

    The prototype layers get lr 0 while they are frozen, as in DINOv2: their gradients
    still count in the head's clipping norm and in AdamW's moments, and with lr 0 AdamW
    moves them neither by the gradient nor by its decoupled weight decay.
    """
    lr, wd = schedules.lr(step), schedules.weight_decay(step)
    frozen = schedules.last_layer_frozen(step)
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if frozen and group["is_last_layer"] else lr * group["lr_mult"]
        group["weight_decay"] = wd * group["wd_mult"]


class DINOv2Module(L.LightningModule):
    """Self-distillation with no labels, DINOv2 style, on multi-crop batches.

    Args:
        config: the recipe.
        global_batch: images per optimiser step over all ranks (sets the lr scaling).
        seed: run seed (device-side augmentation draws from it).
    """

    def __init__(self, config: PretrainConfig, *, global_batch: int, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.seed = seed
        self.schedules = Schedules(config=config, global_batch=global_batch)
        self.student = build_student(config)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        heads = config.heads
        ibot_k = heads.ibot_n_prototypes if "ibot_head" in self.student else heads.n_prototypes
        self.dino_center = SoftmaxCenter(heads.n_prototypes, momentum=config.loss.center_momentum)
        self.ibot_center = SoftmaxCenter(ibot_k, momentum=config.loss.center_momentum)
        self.last_metrics: dict[str, float] = {}
        self._step = 0  # optimiser step being computed (0-based)
        self._sharded = False  # set by configure_model under FSDP
        if config.trainer.compile:  # parameter names (and checkpoints) unchanged
            self.student["backbone"].compile_trunk()
            self.teacher["backbone"].compile_trunk()

    def train(self, mode: bool = True) -> DINOv2Module:
        """Switch the student's mode; the teacher always stays in eval mode (no drop path)."""
        super().train(mode)
        self.teacher.eval()
        return self

    # ----- optimisation -----------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the student's parameter groups; lr and wd are set every step."""
        o = self.config.optim
        groups = param_groups(
            self.student,
            depth=self.student["backbone"].depth,
            layerwise_decay=o.layerwise_decay,
            patch_embed_lr_mult=o.patch_embed_lr_mult,
        )
        # The fused kernel is one pass over all parameters (5x faster than the per-tensor loop
        # on CPU). Only fp16's grad scaler needs the per-tensor path: Lightning unscales the
        # gradients before clipping only for optimisers that do not unscale themselves.
        fused = not self._grad_scaled
        return torch.optim.AdamW(
            groups,
            lr=0.0,
            betas=o.betas,
            weight_decay=0.0,
            fused=fused or None,
            foreach=None if fused else True,
        )

    @property
    def _grad_scaled(self) -> bool:
        return self.config.trainer.precision == "16-mixed"

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradient norm of each student part (backbone, each head) on its own.

        As DINOv2 does: one norm over the whole student would let the 65,536-prototype
        layer's large gradients shrink every backbone step. The prototype gradients count
        during the first-epoch freeze too (their lr is 0 then, see ``_apply_schedules``).
        With fp16, Lightning has unscaled the gradients before this hook, and the scaler
        skips steps with overflowing ones, so only bf16 and fp32 stop on a non-finite norm.
        torch's ``clip_grad_norm_`` is used because Lightning's precision plugins refuse
        norm clipping with a fused optimiser and under FSDP; on FSDP2's sharded DTensor
        gradients it reduces the norm over all ranks.

        Raises:
            TrainingDivergedError: a part's gradient norm is NaN or infinite (bf16, fp32).
        """
        norms = {}
        for name, part in self.student.items():
            grads = [p for p in part.parameters() if p.grad is not None]
            if grads and gradient_clip_val:
                norms[name] = torch.nn.utils.clip_grad_norm_(grads, gradient_clip_val, foreach=True)
            elif grads and not self._grad_scaled:
                norms[name] = torch.nn.utils.get_total_norm([p.grad for p in grads])
        if self._grad_scaled or not norms:
            return
        # Under FSDP2 a norm is a DTensor reduced over the ranks; its full value is the same
        # on every rank, so all ranks stop together.
        values = torch.stack([_full(n).float() for n in norms.values()])  # one device sync
        if not bool(torch.isfinite(values).all()):
            bad = ", ".join(f"{k}={float(v)}" for k, v in zip(norms, values, strict=True))
            raise TrainingDivergedError(
                f"non-finite gradient norm ({bad}) at step {self._step} with finite losses; "
                "training stopped before the optimiser step and the last good checkpoint is "
                "kept (lower optim.base_lr, keep optim.clip_grad on, or check the data)"
            )

    def configure_model(self) -> None:
        """Under ``trainer.strategy: fsdp``, shard student and teacher with FSDP2.

        Every transformer block, each backbone (its embeddings and final norm) and each head
        is one ``fully_shard`` unit over the data-parallel mesh; student and teacher are
        sharded alike, so the EMA update works on matching local shards. With bf16-mixed
        the all-gathered weights are bf16 and gradients are reduced in fp32. Other
        strategies set no device mesh and leave the model as it is.
        """
        mesh = self.device_mesh
        if mesh is None or self._sharded:
            return
        from torch.distributed.fsdp import (
            MixedPrecisionPolicy,
            fully_shard,
            register_fsdp_forward_method,
        )

        kwargs: dict[str, Any] = {"mesh": mesh["data_parallel"]}
        if self.config.trainer.precision == "bf16-mixed":
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32
            )
        for model in (self.student, self.teacher):
            for block in model["backbone"].vit.blocks:
                fully_shard(block, **kwargs)
                register_fsdp_forward_method(block, "subset_forward")
                register_fsdp_forward_method(block, "selected_forward")
            for part in model.values():
                fully_shard(part, **kwargs)
        self._sharded = True

    def _apply_schedules(self, step: int) -> None:
        apply_schedules(self.optimizers().optimizer, self.schedules, step)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure=None):
        """The AdamW step, then the EMA teacher update t <- m t + (1 - m) s.

        Done here rather than in ``on_train_batch_end`` because checkpoint callbacks run
        before that hook: a checkpoint must hold the teacher after this step's update.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.update_teacher(self.schedules.momentum(self._step))

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """One EMA step of every teacher parameter towards the student's."""
        if self._sharded:
            # FSDP2 keeps a root unit's weights gathered after its forward (the teacher has
            # no backward that would reshard them): shard them so t and s are matching shards.
            from torch.distributed.fsdp import FSDPModule

            for module in self.teacher.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()
        t_params = list(self.teacher.parameters())
        s_params = [p.detach() for p in self.student.parameters()]
        # t + (1 - m)(s - t) is m t + (1 - m) s in one pass over the weights instead of two.
        torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)

    # ----- data on device -----------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int):
        """Device-side photometric augmentation when the loader sends uint8 crops."""
        if (
            self.config.augment.photometric_on != "device"
            or batch["global_crops"].is_floating_point()
        ):
            return batch
        cfg, m = self.config, self.config.model
        gen = seeded_generator(self.seed, int(batch["positions"][0]), 13)
        roles = crop_roles(cfg.augment, cfg.crops.n_local)
        b = batch["positions"].shape[0]
        out = {}
        for key, role_slice in (("global_crops", roles[:2]), ("local_crops", roles[2:])):
            views = batch[key].float().div_(255.0).split(b)
            done = [
                normalize(
                    photometric(v, cfg.augment, blur_p=bp, solarize_p=sp, gen=gen), m.mean, m.std
                )
                for v, (bp, sp) in zip(views, role_slice, strict=True)
            ]
            out[key] = torch.cat(done) if done else batch[key].float()
        return {**batch, **out}

    # ----- losses -----------------------------------------------------------------------
    def _targets(self, logits: torch.Tensor, center: SoftmaxCenter, temp: float) -> torch.Tensor:
        if self.config.loss.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temp, n_iters=self.config.loss.sk_iters)
        probs = center.probs(logits, temp)
        center.update(logits)
        return probs

    def _encode(
        self,
        model: nn.ModuleDict,
        images: torch.Tensor,
        masks: torch.Tensor | None,
        select: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS tokens (B, D) and the ``select``-ed patch tokens (M, D) of one backbone pass.

        The last block runs only on these tokens.
        """
        out = model["backbone"](images, masks, select=select)
        return out.cls, out.patch

    def _head_logits(
        self, model: nn.ModuleDict, cls_tokens: torch.Tensor, patch_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """DINO logits of (C, D) CLS tokens and iBOT logits of (M, D) masked patch tokens.

        With a shared head both go through it in one pass, as in DINOv2: the 65,536-wide
        prototype layer is weight-normalised once and multiplied as one matrix instead of
        once per crop group, which is most of the head's cost.
        """
        if patch_tokens is None:
            return model["dino_head"](cls_tokens), None
        if "ibot_head" in model:
            return model["dino_head"](cls_tokens), model["ibot_head"](patch_tokens)
        logits = model["dino_head"](torch.cat([cls_tokens, patch_tokens]))  # (C + M, K)
        cls_logits, patch_logits = logits.split([cls_tokens.shape[0], patch_tokens.shape[0]])
        return cls_logits, patch_logits

    def compute_losses(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Loss terms of one batch at optimiser step ``step``; ``total`` is the weighted sum.

        One teacher pass (global crops), one student pass over the masked global crops whose
        CLS and patch tokens both feed the losses, one over the local crops, and one head
        pass per model on the CLS tokens plus the gathered masked patch tokens only. Each
        pass finishes its last block on the CLS and masked tokens alone, the only outputs
        the losses read.
        """
        cfg = self.config.loss
        g, loc, masks = batch["global_crops"], batch["local_crops"], batch["masks"]
        n_local = self.config.crops.n_local if loc.shape[0] else 0
        b = g.shape[0] // 2
        temp = self.schedules.teacher_temp(step)
        # Decided by the config, not by this rank's masks: a rank whose crops happen to be all
        # unmasked must still join the iBOT centering's all-reduce (with no tokens).
        use_ibot = cfg.ibot_weight > 0
        use_dino = cfg.dino_weight > 0

        no_patch = masks.new_zeros(masks.shape)  # (2B, N): CLS only
        with torch.no_grad():  # teacher sees the unmasked global crops
            t_cls, t_masked = self._encode(self.teacher, g, None, masks if use_ibot else no_patch)
            t_cls_logits, t_patch_logits = self._head_logits(
                self.teacher,
                t_cls if use_dino else t_cls[:0],  # (2B, D)
                t_masked if use_ibot else None,  # (M, D)
            )
            t_cls = self._targets(t_cls_logits, self.dino_center, temp) if use_dino else None
            t_patch = self._targets(t_patch_logits, self.ibot_center, temp) if use_ibot else None

        s_g_cls, s_masked = self._encode(
            self.student, g, masks if use_ibot else None, masks if use_ibot else no_patch
        )
        s_cls = [s_g_cls] if use_dino else []  # (2B, D)
        if use_dino and n_local:
            n_loc_patches = (loc.shape[-2] // self.config.model.patch_size) * (
                loc.shape[-1] // self.config.model.patch_size
            )
            no_loc_patch = masks.new_zeros((loc.shape[0], n_loc_patches))
            s_cls.append(self._encode(self.student, loc, None, no_loc_patch)[0])  # (n_local B, D)
        s_cls_logits, s_patch_logits = self._head_logits(
            self.student,
            torch.cat(s_cls) if s_cls else s_g_cls[:0],
            s_masked if use_ibot else None,
        )

        zero = s_g_cls.new_zeros((), dtype=torch.float32)
        losses = {"dino": zero, "ibot": zero, "koleo": zero}
        if use_dino:
            losses["dino"] = dino_cls_loss(
                list(s_cls_logits.split(b)),  # 2 global crops, then the locals
                list(t_cls.split(b)),
                student_temp=cfg.student_temp,
            )
        if use_ibot:
            weights = (1.0 / masks.sum(dim=1).clamp(min=1.0)).unsqueeze(1).expand_as(masks)[masks]
            losses["ibot"] = ibot_patch_loss(
                s_patch_logits,
                t_patch,
                weights,
                n_images=masks.shape[0],
                student_temp=cfg.student_temp,
            )
        if cfg.koleo_weight > 0:
            losses["koleo"] = sum(koleo_loss(c) for c in s_g_cls.chunk(2))
        losses["total"] = (
            cfg.dino_weight * losses["dino"]
            + cfg.ibot_weight * losses["ibot"]
            + cfg.koleo_weight * losses["koleo"]
        )
        return losses

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Set this step's schedules, compute the losses, stop on a non-finite one."""
        step = self._step = self.global_step
        # Drop-path subsets come from torch's global RNG: reseed it from (seed, step, rank) so
        # that a resumed run repeats exactly what an uninterrupted one does.
        torch.manual_seed(
            int(seeded_generator(self.seed, step, self.global_rank, 17).initial_seed())
        )
        self._apply_schedules(step)
        losses = self.compute_losses(batch, step)
        check_finite_losses(losses, step)
        metrics = {f"train/{k}": v.detach() for k, v in losses.items()}
        metrics.update(
            {
                "train/lr": self.schedules.lr(step),
                "train/wd": self.schedules.weight_decay(step),
                "train/momentum": self.schedules.momentum(step),
                "train/teacher_temp": self.schedules.teacher_temp(step),
                "train/step": float(step + 1),
            }
        )
        self.log_dict(metrics, on_step=True, prog_bar=False, sync_dist=self.trainer.world_size > 1)
        self.last_metrics = {k.removeprefix("train/"): float(v) for k, v in metrics.items()}
        return losses["total"]
