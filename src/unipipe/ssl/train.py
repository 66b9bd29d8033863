"""The pretraining stage: Lightning Trainer set-up, phases, auto-resume, metrics, teacher export."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import re
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
# The files a resume reads, which claim_out_dir moves aside and back as one.
_RUN_FILES = ("checkpoints", "metrics_stream.csv")
_REQUEUE_GLOB = "hpc_ckpt_*.ckpt"
# A fingerprint names a folder (stale-<fp>, stale-<fp>-<n>): no separators, no dashes.
_FINGERPRINT = re.compile(r"[0-9A-Za-z_]{1,64}")
# Lightning notes that are expected here: the teacher is kept in eval mode on purpose, and
# the module (not the data module) owns the device-side augmentation hook.
_EXPECTED_WARNINGS = (
    r".*module\(s\) in eval mode at the start of training.*",
    r".*overridden `on_after_batch_transfer` in `LightningModule`.*",
    # FSDP2 on the backbone's CLS / patch views: nothing here modifies them in place.
    r".*returned a view tensor. An in-place op on this view.*",
    # The sampler resumes by step (PretrainDataModule), which Lightning cannot see.
    r".*your dataloader is not resumable.*",
    # Lightning's hint whenever srun exists on the machine: unipipe starts ranks with srun
    # itself where a profile asks for several tasks (unipipe.ssl.cli.launch_command).
    r".*The `srun` command is available on your system but is not used.*",
)


@contextlib.contextmanager
def _expected_warnings_hidden():
    with warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


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


def read_metrics(path: Path) -> list[list[str]]:
    """The well-formed rows of a metrics stream, header left out, in file order.

    A row is well formed when it has every column of ``METRIC_COLUMNS``, an integer step
    and numbers (or blanks) elsewhere. Anything else is what an append cut off by a crash
    or a full disk leaves (a partial line, a NUL-padded tail after a node crash): it is
    dropped with a warning naming the file and how many rows, never copied, never fatal.
    """
    text = path.read_bytes().decode("utf-8", errors="replace")
    rows, dropped = [], 0
    for row in csv.reader(io.StringIO(text)):
        if not row or row == list(METRIC_COLUMNS):
            continue
        if _well_formed(row):
            rows.append(row)
        else:
            dropped += 1
    if dropped:
        logger.warning(
            "%s: dropped %d malformed row(s), cut off by a crash or a full disk while being "
            "appended; the steps they held are missing from the metrics",
            path,
            dropped,
        )
    return rows


def _well_formed(row: list[str]) -> bool:
    if len(row) != len(METRIC_COLUMNS):
        return False
    try:
        if int(row[0]) < 0:
            return False
        for value in row[1:]:
            if value:
                float(value)
    except ValueError:  # also a NUL or a replacement character inside a number
        return False
    return True


def _write_metrics(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(METRIC_COLUMNS)
        writer.writerows(rows)


class MetricsCSV(Callback):
    """Streams one row per optimiser step (rank 0) to ``path``; keeps rows before a resume."""

    def __init__(self, path: Path, *, log_every_n_steps: int) -> None:
        self.path = path
        self.log_every = max(log_every_n_steps, 1)
        self._tick = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Drop rows of steps that will be recomputed after a resume, and malformed rows."""
        if not trainer.is_global_zero:
            return
        rows = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            rows = [r for r in read_metrics(self.path) if int(r[0]) <= trainer.global_step]
        _write_metrics(self.path, rows)
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


def _read_claim(marker: Path, *, warn: bool) -> dict[str, Any] | None:
    """run.json's content, or None when it is absent or unreadable (a warning if ``warn``).

    Raises:
        ConfigError: a directory at run.json's path, naming it and the fix.
    """
    if marker.is_dir():
        raise ConfigError(
            f"{marker} is a directory; pretraining writes a file there recording which run "
            f"owns the checkpoints in {marker.parent}. Remove it (rm -r '{marker}') and rerun"
        )
    try:
        claim = json.loads(marker.read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:  # truncated, NUL-padded, not UTF-8: content, not the disk
        claim = err
    fingerprint = claim.get("fingerprint") if isinstance(claim, dict) else None
    if isinstance(fingerprint, str) and _FINGERPRINT.fullmatch(fingerprint):
        return claim
    if warn:
        logger.warning(
            "%s is unreadable or holds no run fingerprint (%s); the checkpoints next to it "
            "are treated as another run's",
            marker,
            claim if isinstance(claim, Exception) else f"content {str(claim)[:80]!r}",
        )
    return None


def _run_files(folder: Path) -> list[Path]:
    paths = [folder / name for name in _RUN_FILES] + sorted(folder.glob(_REQUEUE_GLOB))
    return [p for p in paths if p.exists()]


def _set_aside(out_dir: Path, owner: str | None, paths: list[Path]) -> Path:
    """Move ``paths`` into a new folder ``stale-<owner>`` (``-2``, ``-3``, ... when taken)."""
    base = f"stale-{owner or 'unknown'}"
    for n in itertools.count(1):
        stale = out_dir / (base if n == 1 else f"{base}-{n}")
        try:
            stale.mkdir()
            break
        except FileExistsError:  # an earlier switch's: never merged into, never overwritten
            pass
    for path in paths:
        os.replace(path, stale / path.name)
    return stale


def _stale_of(out_dir: Path, fingerprint: str) -> tuple[Path, int] | None:
    """The folder of this run's moved-aside checkpoints to restore, and its furthest step.

    Of ``stale-<fp>`` and ``stale-<fp>-<n>``, the one with the furthest readable
    checkpoint; the plain one, then the lowest n, on a tie. Checkpoints of one fingerprint
    are one recipe, seed, data and global batch, so every such folder continues the same
    run and the furthest saves the most training; the plain name alone could be one whose
    checkpoints were cut off by a kill, or an older copy of the run.
    """
    pattern = re.compile(rf"stale-{fingerprint}(?:-(\d+))?")
    found = []
    for folder in out_dir.glob(f"stale-{fingerprint}*"):
        match = pattern.fullmatch(folder.name)
        if match and folder.is_dir():
            steps = [_readable_step(p) for p in _checkpoint_files(folder)]
            steps = [step for step in steps if step is not None]
            if steps:
                found.append((max(steps), -int(match.group(1) or 1), folder))
    if not found:
        return None
    step, _, folder = max(found)
    return folder, step


def _restore(out_dir: Path, stale: Path) -> None:
    for path in _run_files(stale):
        if not (out_dir / path.name).exists():  # moved back already by an interrupted claim
            os.replace(path, out_dir / path.name)
    with contextlib.suppress(OSError):  # something else was put there: left for a person
        stale.rmdir()


def claim_out_dir(out_dir: Path, fingerprint: str) -> None:
    """Keep the checkpoints in ``out_dir`` only if they were made by this very run.

    Resuming a changed recipe (or new shards) from old checkpoints would silently continue
    the old run and export it, so checkpoints of another run (``checkpoints/``,
    ``metrics_stream.csv``, ``hpc_ckpt_*.ckpt``) are moved aside to a new folder
    ``stale-<their fingerprint>``, not reused; ``stale-unknown`` when ``run.json`` is
    missing or unreadable. A folder of that name that exists already is never merged into:
    the next free ``stale-<fp>-2``, ``-3``, ... is taken.

    Checkpoints this run left aside earlier (another recipe ran here in between) are moved
    back, so it resumes from them: from the ``stale-<fingerprint>*`` folder with the
    furthest readable checkpoint (see :func:`_stale_of`). ``stale-unknown*`` folders are
    never restored, as nothing tells whose they are; move one back by hand if it is this
    run's. ``run.json`` names the folder being restored until every file is back, so a
    claim cut off half-way is finished by the next one, and :func:`wait_for_claim` lets
    other ranks go on only once the restore is done.

    Raises:
        ConfigError: ``run.json`` is a directory.
    """
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(f"fingerprint {fingerprint!r} is not 1-64 letters, digits or _")
    marker = out_dir / RUN_MARKER
    claim = _read_claim(marker, warn=True)
    old = claim["fingerprint"] if claim else None
    if old == fingerprint:
        pending = claim.get("restoring")
        if pending is not None:
            stale = out_dir / str(pending)
            if re.fullmatch(rf"stale-{fingerprint}(?:-\d+)?", str(pending)) and stale.is_dir():
                _restore(out_dir, stale)
            write_json(marker, {"fingerprint": fingerprint})
        return
    leftovers = _run_files(out_dir)
    if leftovers:
        stale = _set_aside(out_dir, old, leftovers)
        logger.warning(
            "checkpoints in %s come from another recipe, seed or data (run %s); moved them to %s",
            out_dir,
            old or "unknown",
            stale,
        )
    found = _stale_of(out_dir, fingerprint)
    if found is not None:
        stale, step = found
        write_json(marker, {"fingerprint": fingerprint, "restoring": stale.name})
        _restore(out_dir, stale)
        logger.warning(
            "%s holds this run's checkpoints, moved aside when another run used %s; moved "
            "them back: the run resumes from them (step %d)",
            stale,
            out_dir,
            step,
        )
    elif leftovers:
        logger.warning("training from step 0 in %s", out_dir)
    write_json(marker, {"fingerprint": fingerprint})


def wait_for_claim(out_dir: Path, fingerprint: str, *, timeout_s: float = 600.0) -> None:
    """Wait until rank 0 has claimed ``out_dir`` for this run (see :func:`claim_out_dir`),
    including moving back checkpoints of this run from a ``stale-*`` folder.

    An unreadable ``run.json`` (truncated, not JSON, not an object) is waited past: rank 0
    replaces it.

    Raises:
        TimeoutError: no claim by this run within ``timeout_s``, naming the folder.
        ConfigError: ``run.json`` is a directory (rank 0 stops on it too).
    """
    marker = out_dir / RUN_MARKER
    deadline = time.monotonic() + timeout_s
    while True:
        claim = _read_claim(marker, warn=False)
        if claim and claim["fingerprint"] == fingerprint and "restoring" not in claim:
            return
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
        # Overwrite, never version: a name that exists already is this run's file of that
        # step (or its last.ckpt) from before a resume. With versions, a resume from a
        # checkpoint other than last.ckpt, or in a moved out_dir (Lightning then forgets
        # which last.ckpt is its own), wrote last-v1.ckpt next to the old last.ckpt.
        enable_version_counter=False,
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
        logger.warning("checkpoint %s is unreadable (%s); skipping it", path, err)
        return None


def _checkpoint_files(out_dir: Path) -> list[Path]:
    """Every checkpoint a resume may start from, last.ckpt first (it wins a tie)."""
    ckpts = out_dir / "checkpoints"
    candidates = [
        ckpts / LAST_CKPT,
        *sorted(ckpts.glob("last-v*.ckpt")),
        *sorted(out_dir.glob(_REQUEUE_GLOB)),
        *sorted(ckpts.glob("step*.ckpt")),
    ]
    return [p for p in candidates if p.is_file()]


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The furthest-on readable checkpoint: last.ckpt, SLURM requeue or periodic ones.

    On SLURM's pre-emption signal Lightning saves ``hpc_ckpt_<n>.ckpt`` in ``out_dir`` and
    requeues the job; the requeued run continues from whichever checkpoint is furthest on.
    A checkpoint that cannot be read (a save cut off by a kill) is skipped with a warning,
    so the periodic ``checkpoints/step*.ckpt`` still resume the run. ``last-v<n>.ckpt``
    count too: Lightning wrote them next to an older last.ckpt before build_trainer
    turned its version counter off, and they may be the only copy of the latest step.

    Raises:
        ConfigError: checkpoints exist but none can be read.
    """
    steps = {p: _readable_step(p) for p in _checkpoint_files(out_dir)}
    readable = {p: step for p, step in steps.items() if step is not None}
    if not readable:
        if steps:
            raise ConfigError(
                f"no checkpoint in {out_dir} can be read ({', '.join(map(str, steps))}); "
                "delete them to train from step 0"
            )
        return None
    return max(readable, key=readable.__getitem__)


def _rewrite_last(checkpoint: Path, last: Path) -> None:
    """Make last.ckpt a copy of ``checkpoint``, the furthest one of a finished run.

    Not needed by any output, so a failure (the disk may still be full) is a warning.
    """
    try:
        with atomic_path(last) as tmp:
            shutil.copyfile(checkpoint, tmp)
    except OSError as err:
        logger.warning(
            "could not rewrite %s from %s (%s); it stays as it was", last, checkpoint, err
        )
    else:
        logger.info("rewrote %s from %s, the furthest readable checkpoint", last, checkpoint)


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
    """Train DINOv2 on the shards, resuming from the furthest readable checkpoint in out_dir.

    Writes out_dir/checkpoints/ (every ``checkpoint.every_n_steps``, the last
    ``checkpoint.keep_last`` kept, plus last.ckpt), ``metrics_csv`` (one row per step:
    step, total, dino, ibot, koleo, lr, wd, momentum, teacher_temp, step_s), the teacher
    backbone as ``encoder_safetensors`` + ``encoder_json``, and ``sidecar``.

    The main phase reads the tile spec ``data.spec`` of the stores, the high-res phase
    ``highres.spec``; both are checked against the stores (each store and spec group read
    must be on disk) and the crop sizes before any step is trained and before checkpoints
    of another run are moved aside (:func:`claim_out_dir`), and the sidecar records per
    phase the specs, stores and patches read. The teacher is exported from the checkpoint
    saved last, or, when every phase was done, from the one resumed.

    Raises:
        ConfigError: a phase's tile spec is in no store, a store or spec group it reads
            is missing, a crop is larger than the patches it is cut from, or
            checkpoints exist without ``metrics_stream.csv`` (at start-up, naming the key
            or file and the fix).
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
    with _expected_warnings_hidden():
        first = build_trainer(
            config, out_dir=out_dir, max_steps=plan[0].phase.end, metrics_path=stream
        )
    fingerprint = run_fingerprint(config, seed, index_parquet, world_size=first.world_size)
    # Ranks that srun starts together all get here at once: only rank 0 moves stale
    # checkpoints aside; the others wait for its claim before they look for one to resume.
    if first.is_global_zero:
        claim_out_dir(out_dir, fingerprint)
    else:
        wait_for_claim(out_dir, fingerprint)
    start = latest_checkpoint(out_dir)
    resumed = _checkpoint_step(start) if start else 0
    if start is not None and not stream.exists():
        # Checked here, before any step: at the end it would cost the steps trained.
        raise ConfigError(
            f"{stream} is missing, but {out_dir} holds checkpoints up to step {resumed} "
            f"({start.name}), and the losses of steps 1-{resumed} that metrics.csv records "
            "cannot be rebuilt from checkpoints. Put the file back (a copy, or a stale-*/ "
            f"folder's), or create it empty (touch '{stream}') to accept a metrics.csv "
            f"without those steps, or move {out_dir / 'checkpoints'} away to train from step 0"
        )
    done, module, trainer, img_size = resumed, None, None, config.crops.global_size
    for reads in plan:
        phase = reads.phase
        img_size = phase.global_size
        if done >= phase.end:
            continue
        with _expected_warnings_hidden():
            trainer = (
                first
                if phase is plan[0].phase
                else build_trainer(
                    config, out_dir=out_dir, max_steps=phase.end, metrics_path=stream
                )
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
        with _expected_warnings_hidden():
            trainer.fit(module, datamodule=data, ckpt_path=start)
        trainer.save_checkpoint(last)
        # The last step's gradients are left on the parameters. Under FSDP the next phase
        # loads the optimiser state into a fresh AdamW, which torch can do only when no
        # parameter holds a gradient.
        module.zero_grad(set_to_none=True)
        done, start = phase.end, last

    if not first.is_global_zero:  # also when every phase was done and nothing trained
        return
    if start is None:
        raise ConfigError(f"no step to train or export in {out_dir}: check schedule.total_steps")
    # The checkpoint saved last, or, when nothing was left to train, the one resumed: a
    # last.ckpt cut off by a full disk is unreadable although the run is finished.
    export_teacher(
        start,
        config,
        encoder_safetensors=Path(encoder_safetensors),
        encoder_json=Path(encoder_json),
        img_size=img_size,
    )
    if start != last:
        _rewrite_last(start, last)
    with atomic_path(metrics_csv) as tmp:
        _write_metrics(tmp, read_metrics(stream))
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
