"""The pretraining stage: Lightning Trainer set-up, phases, auto-resume, metrics, teacher export."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from unipipe.errors import ConfigError
from unipipe.models import build_vit, save_encoder
from unipipe.provenance import atomic_path, file_sha256, to_jsonable, write_json, write_sidecar
from unipipe.runtime import keep_freed_host_memory
from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.data import (
    PretrainDataModule,
    ShardSource,
    check_phases,
    plan_phases,
    spec_table,
)
from unipipe.ssl.module import DINOv2Module

logger = logging.getLogger(__name__)

__all__ = [
    "STRATEGIES",
    "MetricsCSV",
    "build_trainer",
    "claim_out_dir",
    "export_teacher",
    "latest_checkpoint",
    "phases",
    "resolve_accelerator",
    "run_fingerprint",
    "run_pretrain",
    "wait_for_claim",
]

METRIC_COLUMNS = (
    "step",
    "total",
    "dino",
    "ibot",
    "koleo",
    "lr",
    "wd",
    "momentum",
    "teacher_temp",
    "step_s",
)
LAST_CKPT = "last.ckpt"
# Fingerprint of the run that owns out_dir's checkpoints (see claim_out_dir).
RUN_MARKER = "run.json"
# Lightning notes that are expected here: the teacher is kept in eval mode on purpose, and
# the module (not the data module) owns the device-side augmentation hook.
_EXPECTED_WARNINGS = (
    r".*module\(s\) in eval mode at the start of training.*",
    r".*overridden `on_after_batch_transfer` in `LightningModule`.*",
    # FSDP2 on the backbone's CLS / patch views: nothing here modifies them in place.
    r".*returned a view tensor. An in-place op on this view.*",
    # The sampler resumes by step (PretrainDataModule), which Lightning cannot see.
    r".*train_dataloader.*not resumable.*",
)
# Recipe fields that do not change what is trained: changing them keeps the checkpoints.
# The layout keys (per-device batch, devices, nodes, strategy) are replaced by the global
# batch they make and the checkpoint format, the spec keys by the tile specs they resolve
# to (run_fingerprint).
_FINGERPRINT_IGNORES = {
    "data": ("num_workers", "pin_memory", "batch_size", "spec"),
    # A compiled trunk computes what the eager one does (tests/ssl/test_train.py).
    "trainer": (
        "log_every_n_steps",
        "slurm_requeue",
        "devices",
        "num_nodes",
        "strategy",
        "compile",
    ),
    "checkpoint": ("every_n_steps", "keep_last"),
    "highres": ("spec",),
}


def _fsdp(config: PretrainConfig) -> Any:
    """FSDP2 through Lightning's ModelParallelStrategy; the module shards in configure_model.

    Lightning's FSDPStrategy (FSDP1) refuses to start without CUDA and its precision plugin
    refuses norm clipping; FSDP2 runs on CPU (gloo) as on GPUs, so the tests cover it.
    """
    from lightning.pytorch.strategies import ModelParallelStrategy

    class DataParallelFSDP(ModelParallelStrategy):
        # Every rank is one data-parallel replica: no tensor parallelism (Lightning's "auto"
        # would give each node's GPUs to tensor parallelism).
        def setup_environment(self) -> None:
            self._data_parallel_size = self.num_nodes * self.num_processes
            self._tensor_parallel_size = 1
            super().setup_environment()

    # One full checkpoint file, as with the other strategies: resume, the SLURM requeue
    # checkpoints and the teacher export all read it the same way.
    return DataParallelFSDP(save_distributed_checkpoint=False)


def _ddp(config: PretrainConfig) -> Any:
    from lightning.pytorch.strategies import DDPStrategy

    # With iBOT off the mask token gets no gradient, with DINO off neither may the DINO
    # head; DDP then has to look for unused parameters every step or it stops at the first.
    loss = config.loss
    unused = loss.ibot_weight == 0 or loss.dino_weight == 0
    return DDPStrategy(find_unused_parameters=unused)


# trainer.strategy name -> factory of the Lightning strategy.
STRATEGIES: dict[str, Callable[[PretrainConfig], Any]] = {
    "auto": lambda config: "auto",
    "single": lambda config: "auto",
    "ddp": _ddp,
    "fsdp": _fsdp,
}


class MetricsCSV(Callback):
    """Streams one row per optimiser step (rank 0) to ``path``; keeps rows before a resume."""

    def __init__(self, path: Path, *, log_every_n_steps: int) -> None:
        self.path = path
        self.log_every = max(log_every_n_steps, 1)
        self._tick = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Drop rows of steps that will be recomputed after a resume."""
        if not trainer.is_global_zero:
            return
        rows = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= trainer.global_step]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self._tick = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs, batch, batch_idx
    ) -> None:
        """Append the step's rank-averaged losses and schedule values."""
        now = time.perf_counter()
        step_s, self._tick = now - self._tick, now
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"step": trainer.global_step, "step_s": round(step_s, 4)}
        for key in METRIC_COLUMNS[1:-1]:
            value = metrics.get(f"train/{key}", pl_module.last_metrics.get(key))
            row[key] = float(value) if value is not None else ""
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=METRIC_COLUMNS).writerow(row)
        if trainer.global_step % self.log_every == 0:
            logger.info(
                "step %s loss %.4f (dino %.4f ibot %.4f koleo %.4f) lr %.3g %.2fs/step",
                row["step"],
                row["total"],
                row["dino"],
                row["ibot"],
                row["koleo"],
                row["lr"],
                step_s,
            )


def phases(config: PretrainConfig) -> list[tuple[int, int, int]]:
    """(end step, global crop px, local crop px) of the main phase and the high-res one.

    ``unipipe.ssl.data.plan_phases`` also gives each phase's first step and tile spec.
    """
    return [(p.end, p.global_size, p.local_size) for p in plan_phases(config)]


def resolve_accelerator(requested: str, *, devices: int | str = 1, num_nodes: int = 1) -> str:
    """The Lightning accelerator to use: a GPU request on a node without usable CUDA is CPU.

    A scheduler can hand a job a GPU that this process cannot use (a fake GPU resource in
    CI, a driver mismatch, a CPU-only torch build). Training then runs on the CPU, with a
    warning, instead of Lightning refusing to start. Not for a multi-GPU or multi-node
    recipe, which would become that many CPU processes per node (or wait for nodes).

    Raises:
        ConfigError: a multi-device or multi-node GPU recipe where CUDA is not usable.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    wants_gpu = requested in ("gpu", "cuda") or (requested == "auto" and visible not in ("", "-1"))
    if wants_gpu and not torch.cuda.is_available():
        if devices not in (1, "1", "auto") or num_nodes > 1:
            raise ConfigError(
                f"trainer.devices={devices} x trainer.num_nodes={num_nodes} asks for GPUs but "
                "CUDA is not usable in this process (driver, CUDA_VISIBLE_DEVICES or a CPU "
                "build of torch); fix the node, or set trainer.accelerator: cpu with "
                "devices 1 to train here"
            )
        logger.warning(
            "a GPU was requested (trainer.accelerator=%s, CUDA_VISIBLE_DEVICES=%r) but CUDA is "
            "not usable in this process; training on the CPU instead",
            requested,
            visible,
        )
        return "cpu"
    return requested


def _world_size(config: PretrainConfig) -> int:
    t = config.trainer
    devices = 1 if t.strategy == "single" else t.devices
    if devices == "auto":
        raise ValueError(
            "run_fingerprint: trainer.devices is 'auto', so the global batch is known only "
            "once the Trainer is built; pass world_size=trainer.world_size"
        )
    return int(devices) * t.num_nodes


def run_fingerprint(
    config: PretrainConfig, seed: int, source: ShardSource, *, world_size: int | None = None
) -> str:
    """Hash of what a checkpoint depends on: the resolved recipe, the seed, the data index,
    the tile spec(s) each phase reads, the global batch and the checkpoint format.

    The global batch (data.batch_size x world_size, by default trainer.devices x
    trainer.num_nodes) counts, not how it is split into devices and nodes: the sampler,
    masks and augmentations give every rank its slice of the same global batch, and a
    checkpoint is one full file that loads on any number of ranks (tests/ssl/
    test_train.py resumes one process on two DDP ranks and back, and FSDP on two ranks
    on one). KoLeo and stochastic depth work on each device's share, as in DINOv2, so a
    run moved to another split continues the same recipe without repeating the other
    split's steps bit for bit.

    The strategy counts only as FSDP or not: auto, single and ddp write the same plain
    checkpoint, but a plain checkpoint does not load under FSDP. Lightning re-keys its optimiser
    state from parameter indices to names as if the optimiser held ``parameters()`` in
    module order; the layer-wise lr groups follow another order and leave the teacher out,
    so the moments would go to other parameters (it fails at the first student parameter
    left without state). Moving a run to or from FSDP starts it over.

    The spec keys count as the specs they resolve to (``data.spec`` unset and
    ``256px_0.5mpp`` name the same patches when that is the root spec), and the high-res
    keys only when there is a high-res phase.
    """
    if isinstance(source, str | os.PathLike) and Path(source).is_file():
        data = file_sha256(source)
    else:
        paths = [source] if isinstance(source, str | os.PathLike) else list(source)
        data = sorted(os.fspath(p) for p in paths)
    recipe = config.to_dict()
    for group, keys in _FINGERPRINT_IGNORES.items():
        recipe[group] = {k: v for k, v in recipe[group].items() if k not in keys}
    if not config.highres.steps:
        recipe["highres"] = {"steps": 0}
    specs, table = {}, None
    for phase in plan_phases(config):
        if phase.spec is None:
            table = spec_table(source) if table is None else table
            specs[phase.name] = sorted(set(table.loc[table["root"], "spec"]))
        else:
            specs[phase.name] = [phase.spec]
    world = world_size if world_size is not None else _world_size(config)
    payload = {
        "config": to_jsonable(recipe),
        "seed": seed,
        "data": data,
        "specs": specs,
        "global_batch": config.data.batch_size * world,
        "fsdp_checkpoint": config.trainer.strategy == "fsdp",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def claim_out_dir(out_dir: Path, fingerprint: str) -> None:
    """Keep the checkpoints in ``out_dir`` only if they were made by this very run.

    Resuming a changed recipe (or new shards) from old checkpoints would silently continue
    the old run and export it, so checkpoints of another run are moved aside, not reused.
    """
    marker = out_dir / RUN_MARKER
    old = json.loads(marker.read_text()).get("fingerprint") if marker.exists() else None
    if old == fingerprint:
        return
    leftovers = [out_dir / "checkpoints", out_dir / "metrics_stream.csv"]
    leftovers += sorted(out_dir.glob("hpc_ckpt_*.ckpt"))
    leftovers = [p for p in leftovers if p.exists()]
    if leftovers:
        stale = out_dir / f"stale-{old or 'unknown'}"
        stale.mkdir(exist_ok=True)
        for path in leftovers:
            os.replace(path, stale / path.name)
        logger.warning(
            "checkpoints in %s come from another recipe, seed or data; moved them to %s and "
            "training from step 0",
            out_dir,
            stale,
        )
    write_json(marker, {"fingerprint": fingerprint})


def wait_for_claim(out_dir: Path, fingerprint: str, *, timeout_s: float = 600.0) -> None:
    """Wait until rank 0 has claimed ``out_dir`` for this run (see :func:`claim_out_dir`).

    Raises:
        TimeoutError: no claim by this run within ``timeout_s``, naming the folder.
    """
    marker = out_dir / RUN_MARKER
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if json.loads(marker.read_text()).get("fingerprint") == fingerprint:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass  # not written yet, or being replaced
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"rank 0 did not claim {out_dir} for this run within {timeout_s:.0f} s "
                f"({marker} does not hold fingerprint {fingerprint}); see rank 0's log, or "
                "check that every rank runs the same recipe, seed and shards"
            )
        time.sleep(0.2)


def build_trainer(
    config: PretrainConfig, *, out_dir: Path, max_steps: int, metrics_path: Path
) -> L.Trainer:
    """A Lightning Trainer for one phase, with periodic checkpoints and the metrics stream."""
    t, ck = config.trainer, config.checkpoint
    checkpoints = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=ck.every_n_steps,
        save_top_k=ck.keep_last,
        monitor="step",
        mode="max",
        save_last=True,
    )
    plugins = [SLURMEnvironment(auto_requeue=t.slurm_requeue)] if SLURMEnvironment.detect() else []
    return L.Trainer(
        accelerator=resolve_accelerator(t.accelerator, devices=t.devices, num_nodes=t.num_nodes),
        devices=1 if t.strategy == "single" else t.devices,
        num_nodes=t.num_nodes,
        strategy=STRATEGIES[t.strategy](config),
        precision=t.precision,
        max_steps=max_steps,
        max_epochs=-1,
        gradient_clip_val=config.optim.clip_grad or None,
        gradient_clip_algorithm="norm",
        use_distributed_sampler=False,
        callbacks=[checkpoints, MetricsCSV(metrics_path, log_every_n_steps=t.log_every_n_steps)],
        plugins=plugins,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out_dir,
    )


def _checkpoint_step(path: Path) -> int:
    # mmap: the weights stay on disk, only the step is read (ViT-L checkpoints are GBs).
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"])


def _readable_step(path: Path) -> int | None:
    """The checkpoint's step, or None (with a warning naming it) if it cannot be read."""
    try:
        return _checkpoint_step(path)
    except Exception as err:  # a save cut off by a kill or a full disk: truncated or empty
        logger.warning("checkpoint %s is unreadable (%s); resuming from another one", path, err)
        return None


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The furthest-on readable checkpoint: last.ckpt, SLURM requeue or periodic ones.

    On SLURM's pre-emption signal Lightning saves ``hpc_ckpt_<n>.ckpt`` in ``out_dir`` and
    requeues the job; the requeued run continues from whichever checkpoint is furthest on.
    A checkpoint that cannot be read (a save cut off by a kill) is skipped with a warning,
    so the periodic ``checkpoints/step*.ckpt`` still resume the run.

    Raises:
        ConfigError: checkpoints exist but none can be read.
    """
    candidates = [
        out_dir / "checkpoints" / LAST_CKPT,
        *sorted(out_dir.glob("hpc_ckpt_*.ckpt")),
        *sorted((out_dir / "checkpoints").glob("step*.ckpt")),
    ]
    steps = {p: _readable_step(p) for p in candidates if p.exists()}
    readable = {p: step for p, step in steps.items() if step is not None}
    if not readable:
        if steps:
            raise ConfigError(
                f"no checkpoint in {out_dir} can be read ({', '.join(map(str, steps))}); "
                "delete them to train from step 0"
            )
        return None
    return max(readable, key=readable.__getitem__)


def export_teacher(
    checkpoint: Path,
    config: PretrainConfig,
    *,
    encoder_safetensors: Path,
    encoder_json: Path,
    img_size: int,
) -> None:
    """Write the teacher backbone of ``checkpoint`` as a plain timm encoder."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    prefix = "teacher.backbone.vit."
    weights = {
        k[len(prefix) :].replace("_orig_mod.", ""): v
        for k, v in state.items()
        if k.startswith(prefix)
    }
    m = config.model
    vit = build_vit(m.arch, **m.kwargs)
    vit.load_state_dict(weights)
    save_encoder(
        vit,
        encoder_safetensors,
        encoder_json,
        arch=m.arch,
        kwargs=m.kwargs,
        mean=m.mean,
        std=m.std,
        patch_size=m.patch_size,
        img_size=img_size,
        source="unipipe.ssl DINOv2 teacher",
    )


def run_pretrain(
    index_parquet: ShardSource,
    *,
    config: PretrainConfig,
    out_dir: str | os.PathLike[str],
    encoder_safetensors: str | os.PathLike[str],
    encoder_json: str | os.PathLike[str],
    metrics_csv: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
    seed: int,
) -> None:
    """Train DINOv2 on the shards, resuming from out_dir/checkpoints/last.ckpt if present.

    Writes out_dir/checkpoints/ (every ``checkpoint.every_n_steps``, the last
    ``checkpoint.keep_last`` kept, plus last.ckpt), ``metrics_csv`` (one row per step:
    step, total, dino, ibot, koleo, lr, wd, momentum, teacher_temp, step_s), the teacher
    backbone as ``encoder_safetensors`` + ``encoder_json``, and ``sidecar``.

    The main phase reads the tile spec ``data.spec`` of the stores, the high-res phase
    ``highres.spec``; both are checked against the stores and the crop sizes before any
    step is trained, and the sidecar records per phase the specs, stores and patches read.

    Raises:
        ConfigError: a phase's tile spec is in no store, or a crop is larger than the
            patches it is cut from (at start-up, naming the key and the fix).
        TrainingDivergedError: a loss term became NaN/inf (names the step and term).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "checkpoints" / LAST_CKPT
    stream = out_dir / "metrics_stream.csv"
    L.seed_everything(seed, workers=True, verbose=False)
    keep_freed_host_memory()  # large CPU tensors are reused, not mapped afresh every step
    logger.info("pretraining with %s", config.to_dict())

    plan = check_phases(index_parquet, config)  # before any checkpoint is moved or step run
    first = build_trainer(config, out_dir=out_dir, max_steps=plan[0].phase.end, metrics_path=stream)
    fingerprint = run_fingerprint(config, seed, index_parquet, world_size=first.world_size)
    # Ranks that srun starts together all get here at once: only rank 0 moves stale
    # checkpoints aside; the others wait for its claim before they look for one to resume.
    if first.is_global_zero:
        claim_out_dir(out_dir, fingerprint)
    else:
        wait_for_claim(out_dir, fingerprint)
    start = latest_checkpoint(out_dir)
    resumed = _checkpoint_step(start) if start else 0
    done, module, trainer, img_size = resumed, None, None, config.crops.global_size
    for reads in plan:
        phase = reads.phase
        img_size = phase.global_size
        if done >= phase.end:
            continue
        trainer = (
            first
            if phase is plan[0].phase
            else build_trainer(config, out_dir=out_dir, max_steps=phase.end, metrics_path=stream)
        )
        if module is None:
            global_batch = config.data.batch_size * trainer.world_size
            module = DINOv2Module(config, global_batch=global_batch, seed=seed)
        data = PretrainDataModule(
            index_parquet, config=config, seed=seed, total_steps=phase.end, phase=phase
        )
        logger.info(
            "%s phase to step %s at %s/%s px on %s from step %s",
            phase.name,
            phase.end,
            phase.global_size,
            phase.local_size,
            "/".join(reads.specs),
            done,
        )
        with warnings.catch_warnings():
            for message in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            trainer.fit(module, datamodule=data, ckpt_path=start)
        trainer.save_checkpoint(last)
        # The last step's gradients are left on the parameters. Under FSDP the next phase
        # loads the optimiser state into a fresh AdamW, which torch can do only when no
        # parameter holds a gradient.
        module.zero_grad(set_to_none=True)
        done, start = phase.end, last

    if not first.is_global_zero:  # also when every phase was done and nothing trained
        return
    export_teacher(
        last,
        config,
        encoder_safetensors=Path(encoder_safetensors),
        encoder_json=Path(encoder_json),
        img_size=img_size,
    )
    if stream.exists():
        with atomic_path(metrics_csv) as tmp:
            shutil.copyfile(stream, tmp)
    inputs = (
        [index_parquet] if isinstance(index_parquet, str | os.PathLike) else list(index_parquet)
    )
    write_sidecar(
        sidecar,
        stage="pretrain",
        params={"config": config, "seed": seed},
        inputs=inputs,
        extra={
            "final_step": done,
            "resumed_from_step": resumed,
            "phases": [reads.summary() for reads in plan],
        },
    )
