"""Tests for run_pretrain: outputs, export loadable by timm, resume equivalence, high-res phase."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from unipipe.errors import ConfigError
from unipipe.models import load_encoder
from unipipe.ssl import PretrainConfig, run_pretrain
from unipipe.ssl import data as ssl_data
from unipipe.ssl.data import PretrainDataModule
from unipipe.ssl.module import DINOv2Module
from unipipe.ssl.train import (
    build_trainer,
    claim_out_dir,
    latest_checkpoint,
    resolve_accelerator,
    run_fingerprint,
    wait_for_claim,
)

from .conftest import HIGHRES_SPEC, TINY_YAML

QUICK = {
    "schedule.total_steps": 4,
    "schedule.steps_per_epoch": 1,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "crops.n_local": 2,
    "checkpoint.every_n_steps": 2,
}


@pytest.fixture
def patch_shapes(monkeypatch) -> list[tuple[int, ...]]:
    """The shape of the first patch of every dataset a phase's data module opens."""
    seen, real = [], ssl_data.open_patches

    def spy(*args, **kwargs):
        patches = real(*args, **kwargs)
        seen.append(tuple(patches[0].shape))
        return patches

    monkeypatch.setattr(ssl_data, "open_patches", spy)
    return seen


def _run(shard_index, out, overrides=None, seed=0):
    cfg = PretrainConfig.from_yaml(TINY_YAML, {**QUICK, **(overrides or {})})
    run_pretrain(
        shard_index,
        config=cfg,
        out_dir=out,
        encoder_safetensors=out / "encoder.safetensors",
        encoder_json=out / "encoder.json",
        metrics_csv=out / "metrics.csv",
        sidecar=out / "pretrain.json",
        seed=seed,
    )
    return cfg


def test_run_pretrain_writes_every_output(shard_index, tmp_path):
    """Checkpoints, one metrics row per step, a timm-loadable teacher and the sidecar."""
    cfg = _run(shard_index, tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3, 4]
    assert {"total", "dino", "ibot", "koleo", "lr", "wd", "momentum", "teacher_temp"} <= set(
        metrics
    )
    assert metrics[["total", "dino", "ibot", "koleo"]].notna().all().all()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]

    meta = json.loads((tmp_path / "encoder.json").read_text())
    plain = timm.create_model(meta["arch"], pretrained=False, **meta["kwargs"])
    plain.load_state_dict(load_file(tmp_path / "encoder.safetensors"))
    model, info = load_encoder(tmp_path / "encoder.json")
    assert (info.embed_dim, info.img_size, info.patch_size) == (192, 112, 16)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(
        model.state_dict()["blocks.3.mlp.fc2.weight"],
        ckpt["teacher.backbone.vit.blocks.3.mlp.fc2.weight"],
    )
    sidecar = json.loads((tmp_path / "pretrain.json").read_text())
    assert sidecar["params"]["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert sidecar["extra"]["final_step"] == 4
    assert "torch" in sidecar["versions"]


def test_run_pretrain_resumed_equals_uninterrupted(shard_index, tmp_path):
    """Stopping after 2 of 4 steps and rerunning gives the same teacher and losses."""
    straight = tmp_path / "straight"
    _run(shard_index, straight)

    resumed = tmp_path / "resumed"  # an interrupted run: run_pretrain's set-up, stopped at step 2
    cfg = PretrainConfig.from_yaml(TINY_YAML, QUICK)
    L.seed_everything(0, workers=True, verbose=False)
    resumed.mkdir()
    claim_out_dir(resumed, run_fingerprint(cfg, 0, shard_index))
    trainer = build_trainer(
        cfg, out_dir=resumed, max_steps=2, metrics_path=resumed / "metrics_stream.csv"
    )
    trainer.fit(
        DINOv2Module(cfg, global_batch=4, seed=0),
        datamodule=PretrainDataModule(shard_index, config=cfg, seed=0, total_steps=4),
    )
    _run(shard_index, resumed)

    a, b = (load_file(d / "encoder.safetensors") for d in (straight, resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    ma, mb = (pd.read_csv(d / "metrics.csv") for d in (straight, resumed))
    assert mb["step"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_series_equal(ma["total"], mb["total"], rtol=1e-5)
    assert json.loads((resumed / "pretrain.json").read_text())["extra"]["resumed_from_step"] == 2


def test_run_pretrain_high_res_phase_exports_larger_size(shard_index, tmp_path, patch_shapes):
    """With highres.steps the last steps train at larger crops cut from the 512-px patches
    (highres.spec), not from the main phase's 256-px ones; the export records the size."""
    _run(
        shard_index,
        tmp_path,
        {"highres.steps": 1, "highres.global_size": 160, "highres.local_size": 64},
    )
    assert patch_shapes == [(256, 256, 3), (512, 512, 3)]
    phases = json.loads((tmp_path / "pretrain.json").read_text())["extra"]["phases"]
    assert [(p["phase"], p["steps"], p["specs"], p["n_patches"]) for p in phases] == [
        ("main", [0, 3], ["256px_0.5mpp"], 176),
        ("highres", [3, 4], [HIGHRES_SPEC], 40),
    ]
    meta = json.loads((tmp_path / "encoder.json").read_text())
    assert meta["img_size"] == 160
    model, _ = load_encoder(tmp_path / "encoder.json")
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 160, 160)).shape == (1, 192)
    assert pd.read_csv(tmp_path / "metrics.csv")["step"].tolist() == [1, 2, 3, 4]


HIGH_RES = {"highres.steps": 2, "highres.global_size": 160, "highres.local_size": 64}


@pytest.mark.parametrize(
    ("overrides", "killed_after", "read_after"),
    [({}, 1, [(256, 256, 3)]), (HIGH_RES, 3, [(512, 512, 3)])],
    ids=["main_phase", "high_res_phase"],
)
def test_run_pretrain_killed_mid_phase_resumes_to_the_uninterrupted_run(
    shard_index, tmp_path, patch_shapes, overrides, killed_after, read_after
):
    """A run killed just after a step's checkpoint, early in the main phase or inside a
    high-res phase of steps 3-4 on the 512-px spec, resumes to the uninterrupted run's
    teacher and losses. Both had trained some steps twice on the same batches: Lightning
    starts a new pass over the loader when the epoch count it restored runs out, and the
    sampler restarted at the step the loader was made at."""
    hr = {**overrides, "checkpoint.every_n_steps": 1, "checkpoint.keep_last": 4}
    straight = tmp_path / "straight"
    _run(shard_index, straight, hr)
    assert patch_shapes == [(256, 256, 3), (512, 512, 3)][: 1 + bool(overrides)]

    killed = tmp_path / "killed"  # what a kill just after that step's checkpoint leaves
    shutil.copytree(straight, killed)
    for step in range(killed_after + 1, 5):
        (killed / "checkpoints" / f"step{step:07d}.ckpt").unlink()
    (killed / "checkpoints" / "last.ckpt").unlink()
    for name in ("encoder.safetensors", "encoder.json", "metrics.csv", "pretrain.json"):
        (killed / name).unlink()
    patch_shapes.clear()
    _run(shard_index, killed, hr)
    assert patch_shapes == read_after

    sidecar = json.loads((killed / "pretrain.json").read_text())
    assert sidecar["extra"]["resumed_from_step"] == killed_after
    ma, mb = (pd.read_csv(d / "metrics.csv") for d in (straight, killed))
    assert mb["step"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_series_equal(ma["total"], mb["total"], rtol=1e-5)
    a, b = (load_file(d / "encoder.safetensors") for d in (straight, killed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"highres.steps": 1},
            r"'highres.spec'.*cmu_256only.zarr holds \['256px_0.5mpp'\].*curate.tiling.specs",
        ),
        (
            {"highres.steps": 1, "highres.spec": None, "highres.global_size": 448},
            r"'highres.global_size': 448-px crops cut from the 256-px patches",
        ),
    ],
    ids=["spec_missing", "crops_larger_than_patches"],
)
def test_run_pretrain_refuses_a_missing_spec_or_oversized_crops_at_start_up(
    store_without_highres, tmp_path, overrides, message
):
    """A high-res phase whose spec the store lacks, or whose crops are larger than its
    patches, fails before the main phase trains a step, and before old checkpoints of
    out_dir are moved aside."""
    old = tmp_path / "checkpoints" / "last.ckpt"
    old.parent.mkdir()
    old.write_bytes(b"a checkpoint of an earlier run")
    with pytest.raises(ConfigError, match=message):
        _run([store_without_highres], tmp_path, overrides)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    assert old.read_bytes() == b"a checkpoint of an earlier run"


def test_run_pretrain_different_seed_different_teacher(shard_index, tmp_path):
    """The seed reaches data order and augmentation: another seed trains another teacher."""
    _run(shard_index, tmp_path / "a", {"schedule.total_steps": 2})
    _run(shard_index, tmp_path / "b", {"schedule.total_steps": 2}, seed=1)
    a, b = (load_file(tmp_path / d / "encoder.safetensors") for d in ("a", "b"))
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"augment.photometric_on": "device"},
        {"trainer.precision": "bf16-mixed"},
        {"trainer.precision": "16-mixed"},
    ],
)
def test_run_pretrain_device_photometric_and_mixed_precision_train(
    shard_index, tmp_path, overrides
):
    """The batched photometric path (uint8 crops, jitter after transfer), bf16 autocast with
    the fused AdamW clipped by the module, and a 16-mixed recipe (per-tensor AdamW clipped
    by Lightning) run. On CPU Lightning trains 16-mixed as bf16, so fp16's grad scaler
    itself only runs on a GPU."""
    _run(shard_index, tmp_path, {**overrides, "schedule.total_steps": 2})
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics[["total", "dino", "ibot", "koleo"]].notna().all().all()
    assert metrics["step"].tolist() == [1, 2]


def test_latest_checkpoint_prefers_furthest_requeue_checkpoint(tmp_path):
    """A SLURM requeue checkpoint further on than last.ckpt is the one resumed from."""
    (tmp_path / "checkpoints").mkdir()
    assert latest_checkpoint(tmp_path) is None
    torch.save({"global_step": 10}, tmp_path / "checkpoints" / "last.ckpt")
    torch.save({"global_step": 12}, tmp_path / "hpc_ckpt_1.ckpt")
    torch.save({"global_step": 4}, tmp_path / "hpc_ckpt_2.ckpt")
    assert latest_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"


def test_latest_checkpoint_skips_unreadable_ones(tmp_path, caplog):
    """A truncated last.ckpt and an empty requeue checkpoint (saves cut off by a kill) are
    skipped, naming each file; the periodic checkpoint resumes the run. None readable is
    a ConfigError, not a zip-reader traceback."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"global_step": 10}, ckpts / "step0000010.ckpt")
    torch.save({"global_step": 20}, ckpts / "last.ckpt")
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:100])
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == ckpts / "step0000010.ckpt"
    assert "last.ckpt is unreadable" in caplog.text
    assert "hpc_ckpt_1.ckpt is unreadable" in caplog.text
    (ckpts / "step0000010.ckpt").unlink()
    with pytest.raises(ConfigError, match="no checkpoint .* can be read"):
        latest_checkpoint(tmp_path)


def test_run_fingerprint_ignores_fields_that_do_not_change_training(shard_index):
    """Workers, logging, checkpoint cadence and compiling keep a run's checkpoints; the lr
    does not."""
    base = PretrainConfig.from_yaml(TINY_YAML, QUICK)
    fingerprint = run_fingerprint(base, 0, shard_index)
    for key, value in [
        ("trainer.compile", True),
        ("data.num_workers", 3),
        ("checkpoint.every_n_steps", 7),
        ("checkpoint.keep_last", 9),
        ("trainer.log_every_n_steps", 1),
    ]:
        changed = PretrainConfig.from_yaml(TINY_YAML, {**QUICK, key: value})
        assert run_fingerprint(changed, 0, shard_index) == fingerprint, key
    other = PretrainConfig.from_yaml(TINY_YAML, {**QUICK, "optim.base_lr": 0.001})
    assert run_fingerprint(other, 0, shard_index) != fingerprint


def test_run_fingerprint_counts_the_global_batch_not_its_split(shard_index):
    """8 images per step on 1 device, 4 x 2 DDP devices or 2 x 2 devices x 2 nodes is one
    run (the checkpoints resume); 4 on 1 device is another, and so is a move to FSDP,
    whose loader misplaces a plain checkpoint's optimiser state. The spec keys count as
    the specs they read."""

    def fingerprint(**overrides) -> str:
        cfg = PretrainConfig.from_yaml(TINY_YAML, {**QUICK, **overrides})
        return run_fingerprint(cfg, 0, shard_index)

    base = fingerprint(**{"data.batch_size": 8})
    for layout in [
        {"data.batch_size": 4, "trainer.devices": 2, "trainer.strategy": "ddp"},
        {"data.batch_size": 2, "trainer.devices": 2, "trainer.num_nodes": 2},
        {"data.batch_size": 8, "trainer.strategy": "single", "trainer.devices": 4},
    ]:
        assert fingerprint(**layout) == base, layout
    assert fingerprint(**{"data.batch_size": 4}) != base
    fsdp = {"data.batch_size": 4, "trainer.devices": 2, "trainer.strategy": "fsdp"}
    assert fingerprint(**fsdp) != base
    assert fingerprint(**{**fsdp, "data.batch_size": 8, "trainer.devices": 1}) == fingerprint(
        **fsdp
    )
    # data.spec unset reads the root spec, 256px_0.5mpp: the same patches.
    assert fingerprint(**{"data.batch_size": 8, "data.spec": "256px_0.5mpp"}) == base
    highres = {"data.batch_size": 8, "highres.steps": 1}
    assert fingerprint(**highres) != base
    assert fingerprint(**highres, **{"highres.spec": "256px_0.5mpp"}) != fingerprint(**highres)
    # Without a high-res phase its keys change nothing.
    assert fingerprint(**{"data.batch_size": 8, "highres.spec": "256px_0.5mpp"}) == base


def test_run_pretrain_changed_recipe_does_not_resume_old_checkpoints(shard_index, tmp_path):
    """A rerun with another recipe trains from step 0; the old checkpoints are moved aside."""
    _run(shard_index, tmp_path)
    _run(shard_index, tmp_path, overrides={"optim.base_lr": 0.001})
    sidecar = json.loads((tmp_path / "pretrain.json").read_text())
    assert sidecar["extra"]["resumed_from_step"] == 0
    assert pd.read_csv(tmp_path / "metrics.csv")["step"].tolist() == [1, 2, 3, 4]
    stale = list(tmp_path.glob("stale-*/checkpoints/last.ckpt"))
    assert len(stale) == 1


def test_run_pretrain_same_recipe_resumes_finished_run(shard_index, tmp_path):
    """Rerunning the same recipe, seed and data resumes at the last step and trains nothing."""
    _run(shard_index, tmp_path)
    _run(shard_index, tmp_path)
    assert json.loads((tmp_path / "pretrain.json").read_text())["extra"]["resumed_from_step"] == 4
    assert not list(tmp_path.glob("stale-*"))


def _srun_task(monkeypatch, rank: int, ntasks: int = 2) -> None:
    """The variables srun gives task ``rank`` of one node (Lightning's SLURMEnvironment)."""
    for key, value in {
        "SLURM_NTASKS": ntasks,
        "SLURM_NTASKS_PER_NODE": ntasks,
        "SLURM_NNODES": 1,
        "SLURM_PROCID": rank,
        "SLURM_LOCALID": rank,
        "SLURM_NODEID": 0,
        "SLURM_JOB_ID": 7,
        "SLURM_JOB_NAME": "python3",
    }.items():
        monkeypatch.setenv(key, str(value))


def test_run_pretrain_other_ranks_wait_for_rank_0_and_never_export(
    shard_index, tmp_path, monkeypatch
):
    """srun starts every rank at once: rank 1 of a finished run (the same global batch of
    4 as 2 x 2) neither moves checkpoints nor writes the outputs, which rank 0 owns (every
    rank exported, and raced, when all phases were done)."""
    _run(shard_index, tmp_path)
    outputs = [tmp_path / name for name in ("encoder.safetensors", "encoder.json", "pretrain.json")]
    for path in outputs:
        path.unlink()
    _srun_task(monkeypatch, rank=1)
    split = {"data.batch_size": 2, "trainer.devices": 2, "trainer.strategy": "ddp"}
    _run(shard_index, tmp_path, split)
    assert not any(path.exists() for path in outputs)
    assert not list(tmp_path.glob("stale-*"))


def test_wait_for_claim_returns_on_this_runs_claim_and_names_the_folder_on_timeout(tmp_path):
    """A rank other than 0 goes on once rank 0 has written this run's fingerprint; a claim
    by another run (or none) times out with a message naming the folder."""
    claim_out_dir(tmp_path, "abc")
    wait_for_claim(tmp_path, "abc", timeout_s=0.0)
    with pytest.raises(TimeoutError, match=str(tmp_path)):
        wait_for_claim(tmp_path, "other", timeout_s=0.3)


@pytest.mark.parametrize(
    ("requested", "visible", "expected"),
    [("gpu", "0", "cpu"), ("cuda", "", "cpu"), ("auto", "0", "cpu"), ("auto", "", "auto")],
)
def test_resolve_accelerator_falls_back_to_cpu_without_cuda(
    monkeypatch, caplog, requested, visible, expected
):
    """A GPU request on a node without usable CUDA (CI's fake SLURM GPU) trains on CPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger="unipipe.ssl.train"):
        assert resolve_accelerator(requested) == expected
    assert ("training on the CPU" in caplog.text) == (expected == "cpu")


@pytest.mark.parametrize(("devices", "num_nodes"), [(8, 1), (1, 4)])
def test_resolve_accelerator_refuses_cpu_for_a_multi_gpu_recipe(monkeypatch, devices, num_nodes):
    """UNI's 8 GPUs x 4 nodes where CUDA is unusable would become 8 CPU processes per node
    (or wait for nodes that never join); it is refused, naming the keys."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="trainer.devices"):
        resolve_accelerator("gpu", devices=devices, num_nodes=num_nodes)


@pytest.mark.slow
def test_run_pretrain_compiled_backbone_matches_eager(shard_index, tmp_path):
    """trainer.compile (inductor, C++ on the CPU) trains 2 steps with the eager run's losses.

    With drop path on and more local than global crops, as in every recipe: the compiled
    backbone failed in inductor once the local pass made dynamo treat the batch size as
    symbolic. The batch-subset permutations come from torch's seeded generator in both
    runs, so the subsets agree.
    """
    same = {"schedule.total_steps": 2, "model.drop_path_rate": 0.3, "crops.n_local": 4}
    _run(shard_index, tmp_path / "eager", same)
    counters["stats"].clear()
    _run(shard_index, tmp_path / "compiled", {**same, "trainer.compile": True})
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really captured the backbone
    eager, compiled = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("eager", "compiled"))
    assert compiled["step"].tolist() == [1, 2]
    for term in ("total", "dino", "ibot", "koleo"):
        assert compiled[term].notna().all(), term
        pd.testing.assert_series_equal(eager[term], compiled[term], rtol=1e-4, atol=1e-5)
    a, b = (load_file(tmp_path / d / "encoder.safetensors") for d in ("eager", "compiled"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_checkpoints_resume_under_another_split_of_the_global_batch(shard_index, tmp_path):
    """One process with a batch of 4 resumes on two DDP ranks with 2 each, and back; FSDP
    on two ranks resumes as FSDP on one. Every run ends at the one-process run. KoLeo and
    drop path, which work per device, are off as in tests/ssl/test_ddp.py."""
    from .test_ddp import COMMON, _launch

    same = {
        **COMMON,
        "schedule.total_steps": 4,
        "checkpoint.every_n_steps": 1,
        "checkpoint.keep_last": 4,
    }
    ddp = {**same, "data.batch_size": 2, "trainer.strategy": "ddp", "trainer.devices": 2}
    fsdp = {**ddp, "trainer.strategy": "fsdp"}

    def killed_after(run: Path, step: int, name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(run, out)
        for path in (out / "checkpoints").glob("*.ckpt"):
            if path.name == "last.ckpt" or int(path.stem.removeprefix("step")) > step:
                path.unlink()
        return out

    one = tmp_path / "one"
    _run(shard_index, one, same)
    to_ddp = killed_after(one, 2, "to_ddp")
    _launch(shard_index, to_ddp, ddp, world=2)
    back = killed_after(to_ddp, 3, "back")
    _run(shard_index, back, same)
    _launch(shard_index, tmp_path / "fsdp2", fsdp, world=2)
    fsdp1 = killed_after(tmp_path / "fsdp2", 2, "fsdp1")
    _launch(shard_index, fsdp1, {**fsdp, "data.batch_size": 4, "trainer.devices": 1}, world=1)

    a = load_file(one / "encoder.safetensors")
    for run, resumed_from in ((to_ddp, 2), (back, 3), (fsdp1, 2)):
        sidecar = json.loads((run / "pretrain.json").read_text())
        assert sidecar["extra"]["resumed_from_step"] == resumed_from, run.name
        assert not list(run.glob("stale-*")), run.name
        ma, mb = (pd.read_csv(d / "metrics.csv") for d in (one, run))
        assert mb["step"].tolist() == [1, 2, 3, 4]
        for term in ("total", "dino", "ibot"):
            pd.testing.assert_series_equal(ma[term], mb[term], rtol=1e-4, atol=1e-5)
        b = load_file(run / "encoder.safetensors")
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=run.name + key)
