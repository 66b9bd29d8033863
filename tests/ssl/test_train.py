"""Tests for run_pretrain: outputs, export loadable by timm, resume equivalence, high-res phase."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

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
    MetricsCSV,
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


@pytest.fixture(scope="module")
def finished_run(shard_index, tmp_path_factory) -> Path:
    """The out_dir of one finished QUICK run (seed 0), to be copied, never changed."""
    out = tmp_path_factory.mktemp("finished")
    _run(shard_index, out)
    return out


def _copy(run: Path, out: Path) -> Path:
    shutil.copytree(run, out)
    return out


def _without_outputs(run: Path) -> None:
    """What Snakemake leaves of a run it reruns: the outputs are deleted first."""
    for name in ("encoder.safetensors", "encoder.json", "metrics.csv", "pretrain.json"):
        (run / name).unlink()


def test_run_pretrain_writes_every_output(finished_run):
    """Checkpoints, one metrics row per step, a timm-loadable teacher and the sidecar."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, QUICK)
    metrics = pd.read_csv(finished_run / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3, 4]
    assert {"total", "dino", "ibot", "koleo", "lr", "wd", "momentum", "teacher_temp"} <= set(
        metrics
    )
    assert metrics[["total", "dino", "ibot", "koleo"]].notna().all().all()
    names = sorted(p.name for p in (finished_run / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]

    meta = json.loads((finished_run / "encoder.json").read_text())
    plain = timm.create_model(meta["arch"], pretrained=False, **meta["kwargs"])
    plain.load_state_dict(load_file(finished_run / "encoder.safetensors"))
    model, info = load_encoder(finished_run / "encoder.json")
    assert (info.embed_dim, info.img_size, info.patch_size) == (192, 112, 16)
    ckpt = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(
        model.state_dict()["blocks.3.mlp.fc2.weight"],
        ckpt["teacher.backbone.vit.blocks.3.mlp.fc2.weight"],
    )
    sidecar = json.loads((finished_run / "pretrain.json").read_text())
    assert sidecar["params"]["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert sidecar["extra"]["final_step"] == 4
    assert "torch" in sidecar["versions"]


def test_run_pretrain_resumed_equals_uninterrupted(shard_index, finished_run, tmp_path):
    """Stopping after 1 of 4 steps and rerunning gives the same teacher and losses."""
    straight = finished_run

    resumed = tmp_path / "resumed"  # an interrupted run: run_pretrain's set-up, stopped at step 1
    cfg = PretrainConfig.from_yaml(TINY_YAML, QUICK)
    L.seed_everything(0, workers=True, verbose=False)
    resumed.mkdir()
    claim_out_dir(resumed, run_fingerprint(cfg, 0, shard_index))
    trainer = build_trainer(
        cfg, out_dir=resumed, max_steps=1, metrics_path=resumed / "metrics_stream.csv"
    )
    trainer.fit(
        DINOv2Module(cfg, global_batch=4, seed=0),
        datamodule=PretrainDataModule(shard_index, config=cfg, seed=0, total_steps=4),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(shard_index, resumed)
    # Lightning's "dataloader is not resumable" does not apply: the sampler resumes by step.
    assert not [w for w in caught if "resumable" in str(w.message)]

    a, b = (load_file(d / "encoder.safetensors") for d in (straight, resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    ma, mb = (pd.read_csv(d / "metrics.csv") for d in (straight, resumed))
    assert mb["step"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_series_equal(ma["total"], mb["total"], rtol=1e-5)
    assert json.loads((resumed / "pretrain.json").read_text())["extra"]["resumed_from_step"] == 1


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

    # What a kill while last.ckpt was rewritten just after that step's checkpoint leaves,
    # in a copy of the folder: Lightning, which forgets its last.ckpt in a moved folder,
    # wrote last-v1.ckpt next to the cut-off one, which no rerun looked at.
    killed = _copy(straight, tmp_path / "killed")
    for step in range(killed_after + 1, 5):
        (killed / "checkpoints" / f"step{step:07d}.ckpt").unlink()
    last = killed / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    _without_outputs(killed)
    patch_shapes.clear()
    _run(shard_index, killed, hr)
    assert patch_shapes == read_after
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert names == ["last.ckpt", *(f"step{step:07d}.ckpt" for step in range(1, 5))]
    assert latest_checkpoint(killed) == last

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


def test_run_pretrain_refuses_moved_stores_before_moving_checkpoints(shard_index, tmp_path):
    """An index whose stores were moved fails at start-up, naming a store and the fix,
    and leaves the checkpoints of the run that owns out_dir where they are (it failed when
    the data module opened the stores, after the claim had moved them aside)."""
    table = pd.read_parquet(shard_index)
    table["shard_zarr"] = [str(tmp_path / "moved" / Path(p).name) for p in table["shard_zarr"]]
    index = tmp_path / "index.parquet"
    table.to_parquet(index)
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint of the owning run")
    (out / "run.json").write_text(json.dumps({"fingerprint": "owner"}))
    with pytest.raises(ConfigError, match=r"moved/cmu_0.zarr .*does not exist.*build_dataset"):
        _run(index, out)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "run.json"]
    assert json.loads((out / "run.json").read_text()) == {"fingerprint": "owner"}


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


def test_latest_checkpoint_looks_at_versioned_last_checkpoints(tmp_path):
    """A last-v1.ckpt that Lightning wrote next to an older last.ckpt (a resume in a moved
    folder, with keep_last 0 the only copy of the latest step) is resumed from."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"global_step": 10}, ckpts / "last.ckpt")
    torch.save({"global_step": 14}, ckpts / "last-v1.ckpt")
    torch.save({"global_step": 12}, ckpts / "last-v2.ckpt")
    assert latest_checkpoint(tmp_path) == ckpts / "last-v1.ckpt"


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


def test_run_pretrain_changed_recipe_does_not_resume_old_checkpoints(
    shard_index, finished_run, tmp_path
):
    """A rerun with another recipe trains from step 0; the old checkpoints are moved aside.
    Back to the first recipe, its checkpoints are moved back and it resumes at its last
    step (it trained from step 0 again, its checkpoints left in stale-*/)."""
    run = _copy(finished_run, tmp_path / "run")
    first = json.loads((run / "run.json").read_text())["fingerprint"]
    _run(shard_index, run, overrides={"optim.base_lr": 0.001})
    sidecar = json.loads((run / "pretrain.json").read_text())
    assert sidecar["extra"]["resumed_from_step"] == 0
    assert pd.read_csv(run / "metrics.csv")["step"].tolist() == [1, 2, 3, 4]
    stale = list(run.glob("stale-*/checkpoints/last.ckpt"))
    assert [p.parent.parent.name for p in stale] == [f"stale-{first}"]

    second = json.loads((run / "run.json").read_text())["fingerprint"]
    _without_outputs(run)
    _run(shard_index, run)
    assert json.loads((run / "pretrain.json").read_text())["extra"]["resumed_from_step"] == 4
    assert (run / "metrics.csv").read_bytes() == (finished_run / "metrics.csv").read_bytes()
    stale = list(run.glob("stale-*/checkpoints/last.ckpt"))
    assert [p.parent.parent.name for p in stale] == [f"stale-{second}"]


def test_run_pretrain_same_recipe_resumes_finished_run(shard_index, finished_run, tmp_path):
    """Rerunning the same recipe, seed and data resumes at the last step and trains nothing."""
    run = _copy(finished_run, tmp_path / "run")
    _run(shard_index, run)
    assert json.loads((run / "pretrain.json").read_text())["extra"]["resumed_from_step"] == 4
    assert not list(run.glob("stale-*"))


def test_run_pretrain_finished_run_with_a_cut_off_last_ckpt_exports_the_furthest_one(
    shard_index, finished_run, tmp_path, caplog
):
    """A full disk cut off the final last.ckpt: the rerun resumes the final step's
    periodic checkpoint, exports the teacher from it (it read the cut-off last.ckpt, a
    raw zip-reader error on every rerun) and rewrites last.ckpt from it."""
    run = _copy(finished_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])
    _without_outputs(run)
    _run(shard_index, run)
    assert load_file(run / "encoder.safetensors").keys() == (
        load_file(finished_run / "encoder.safetensors").keys()
    )
    for key, value in load_file(finished_run / "encoder.safetensors").items():
        torch.testing.assert_close(load_file(run / "encoder.safetensors")[key], value, msg=key)
    assert torch.load(last, weights_only=False, mmap=True)["global_step"] == 4
    assert f"{last} is unreadable" in caplog.text


def test_run_pretrain_finished_run_drops_malformed_metrics_rows(
    shard_index, finished_run, tmp_path, caplog
):
    """A partial last line and a NUL-padded tail (an append cut off by a crash or a full
    disk) are not copied to metrics.csv; a warning names the stream and the count."""
    run = _copy(finished_run, tmp_path / "run")
    stream = run / "metrics_stream.csv"
    stream.write_bytes(stream.read_bytes() + b"5\r\n" + b"\x00" * 300)
    _without_outputs(run)
    _run(shard_index, run)
    assert (run / "metrics.csv").read_bytes() == (finished_run / "metrics.csv").read_bytes()
    assert f"{stream}: dropped 2 malformed row(s)" in caplog.text


def test_run_pretrain_finished_run_without_its_metrics_stream_names_the_file(
    shard_index, finished_run, tmp_path
):
    """Without metrics_stream.csv the run cannot write metrics.csv, a declared output (it
    exited 0 without it): a ConfigError names the file and the fixes, before any step."""
    run = _copy(finished_run, tmp_path / "run")
    (run / "metrics_stream.csv").unlink()
    _without_outputs(run)
    with pytest.raises(ConfigError, match=r"metrics_stream.csv is missing.*steps 1-4.*touch"):
        _run(shard_index, run)
    assert not (run / "encoder.safetensors").exists()


def test_metrics_csv_drops_malformed_rows_on_resume(tmp_path, caplog):
    """Resuming at step 2 keeps the stream's well-formed rows up to it; a partial row and
    a NUL-padded tail (a node crash) are dropped with a warning, not a ValueError."""
    stream = tmp_path / "metrics_stream.csv"
    good = [f"{step},1.5,1.0,0.5,0.0,0.001,0.04,0.996,0.04,0.5" for step in (1, 2, 3)]
    header = "step,total,dino,ibot,koleo,lr,wd,momentum,teacher_temp,step_s"
    stream.write_bytes("\r\n".join([header, *good, "4,1.2,"]).encode() + b"\r\n" + b"\x00" * 64)
    MetricsCSV(stream, log_every_n_steps=1).on_train_start(
        SimpleNamespace(is_global_zero=True, global_step=2), None
    )
    assert stream.read_text().splitlines() == [header, *good[:2]]
    assert f"{stream}: dropped 2 malformed row(s)" in caplog.text


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
    shard_index, finished_run, tmp_path, monkeypatch
):
    """srun starts every rank at once: rank 1 of a finished run (the same global batch of
    4 as 2 x 2) neither moves checkpoints nor writes the outputs, which rank 0 owns (every
    rank exported, and raced, when all phases were done)."""
    tmp_path = _copy(finished_run, tmp_path / "run")
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


def _checkpoints_of(out: Path, step: int, tag: str) -> None:
    """What a run leaves in ``out``: checkpoints at ``step``, a requeue one and the stream
    (its content tagged, to tell runs apart)."""
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": step}, out / "checkpoints" / "last.ckpt")
    torch.save({"global_step": step - 1}, out / "hpc_ckpt_1.ckpt")
    (out / "metrics_stream.csv").write_text(f"step\n{tag}\n")


def _owner(out: Path) -> str:
    """The tag of the run whose files are in ``out`` (see _checkpoints_of)."""
    return (out / "metrics_stream.csv").read_text().split()[1]


def test_claim_out_dir_brings_back_this_runs_checkpoints_after_another_run(tmp_path, caplog):
    """Recipe A, then B by mistake, then A: A resumes from its checkpoints, which B's claim
    had moved to stale-A/ (A trained from step 0 again, and the next switch to B crashed
    on stale-A/checkpoints)."""
    claim_out_dir(tmp_path, "aaa")
    _checkpoints_of(tmp_path, 30, "A")
    claim_out_dir(tmp_path, "bbb")
    assert latest_checkpoint(tmp_path) is None
    assert _owner(tmp_path / "stale-aaa") == "A"
    _checkpoints_of(tmp_path, 2, "B")
    for switch in range(3):
        caplog.clear()
        claim_out_dir(tmp_path, "aaa")
        assert (_owner(tmp_path), latest_checkpoint(tmp_path)) == (
            "A",
            tmp_path / "checkpoints" / "last.ckpt",
        )
        assert sorted(p.name for p in tmp_path.glob("stale-*")) == ["stale-bbb"], switch
        assert "resumes from them (step 30)" in caplog.text
        wait_for_claim(tmp_path, "aaa", timeout_s=0.0)
        claim_out_dir(tmp_path, "bbb")
        assert _owner(tmp_path) == "B"
        assert sorted(p.name for p in tmp_path.glob("stale-*")) == ["stale-aaa"], switch


def test_claim_out_dir_never_merges_into_a_stale_folder_and_restores_the_furthest(tmp_path):
    """A stale-<fp>/ that exists already (from before checkpoints were moved back, or run.json
    lost twice) is never merged into, which failed with 'Directory not empty': the next
    free stale-<fp>-<n> is taken. Of several, the one with the furthest readable
    checkpoint is moved back."""
    for name, step in (("stale-aaa", 5), ("stale-aaa-3", 50)):
        _checkpoints_of(tmp_path / name, step, name)
    (tmp_path / "stale-aaa-3" / "checkpoints" / "last.ckpt").write_bytes(b"cut off")
    (tmp_path / "stale-aaa-3" / "hpc_ckpt_1.ckpt").write_bytes(b"")
    # A trained from step 0 next to stale-aaa/ (before checkpoints were moved back).
    (tmp_path / "run.json").write_text(json.dumps({"fingerprint": "aaa"}))
    _checkpoints_of(tmp_path, 30, "A")
    claim_out_dir(tmp_path, "bbb")
    assert _owner(tmp_path / "stale-aaa-2") == "A"
    _checkpoints_of(tmp_path, 2, "B")
    claim_out_dir(tmp_path, "aaa")
    assert _owner(tmp_path) == "A"
    assert sorted(p.name for p in tmp_path.glob("stale-*")) == [
        "stale-aaa",
        "stale-aaa-3",
        "stale-bbb",
    ]

    lost = tmp_path / "lost"
    for n in range(3):  # run.json lost before each claim: the owner is unknown
        _checkpoints_of(lost, 7, f"lost{n}")
        (lost / "run.json").unlink(missing_ok=True)
        claim_out_dir(lost, "ccc")
    names = ["stale-unknown", "stale-unknown-2", "stale-unknown-3"]
    assert [_owner(lost / name) for name in names] == ["lost0", "lost1", "lost2"]
    assert latest_checkpoint(lost) is None


def test_claim_out_dir_finishes_a_restore_cut_off_half_way(tmp_path):
    """run.json names the stale folder being moved back until it is done: a claim cut off
    there is finished by the next one, and other ranks wait until it is."""
    _checkpoints_of(tmp_path / "stale-aaa", 30, "A")
    (tmp_path / "run.json").write_text(json.dumps({"fingerprint": "aaa", "restoring": "stale-aaa"}))
    with pytest.raises(TimeoutError):
        wait_for_claim(tmp_path, "aaa", timeout_s=0.0)
    claim_out_dir(tmp_path, "aaa")
    assert _owner(tmp_path) == "A"
    assert not list(tmp_path.glob("stale-*"))
    wait_for_claim(tmp_path, "aaa", timeout_s=0.0)


@pytest.mark.parametrize(
    "content",
    [b'{"fingerprint": "aa', b'["aaa"]', b"\x00" * 64, b'{"fingerprint": "../x"}', b"\xff\xfe"],
    ids=["truncated", "list", "nul", "path", "binary"],
)
def test_claim_out_dir_takes_an_unreadable_run_json_for_an_unknown_owner(tmp_path, caplog, content):
    """A run.json that is cut off, not an object or not text names no owner: a warning
    names it and the checkpoints go to stale-unknown/ (JSONDecodeError, AttributeError).
    Other ranks keep waiting for rank 0's claim instead of failing."""
    _checkpoints_of(tmp_path, 30, "X")
    marker = tmp_path / "run.json"
    marker.write_bytes(content)
    with pytest.raises(TimeoutError):
        wait_for_claim(tmp_path, "aaa", timeout_s=0.0)
    claim_out_dir(tmp_path, "aaa")
    assert f"{marker} is unreadable or holds no run fingerprint" in caplog.text
    assert _owner(tmp_path / "stale-unknown") == "X"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "stale-unknown"]
    wait_for_claim(tmp_path, "aaa", timeout_s=0.0)


def test_claim_out_dir_names_a_directory_in_place_of_run_json(tmp_path):
    """A directory at run.json's path is a ConfigError naming it and the fix, on rank 0 and
    on the ranks that wait for it (an IsADirectoryError, or a 10-minute wait)."""
    (tmp_path / "run.json").mkdir()
    for claim in (claim_out_dir, wait_for_claim):
        with pytest.raises(ConfigError, match=rf"{tmp_path / 'run.json'} is a directory.*rm -r"):
            claim(tmp_path, "aaa")


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
