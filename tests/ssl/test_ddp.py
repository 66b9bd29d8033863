"""DDP and FSDP on two CPU processes (gloo) train exactly like one process with the same batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")
# KoLeo's nearest neighbours and drop-path subsets are per rank by design (as in DINOv2),
# so they are off here; everything else (SK / centering sums, masks, data) is global.
COMMON = {
    "schedule.total_steps": 3,
    "schedule.steps_per_epoch": 1,
    # More local than global crops per rank, as in every recipe: a compiled trunk once
    # failed as soon as the local pass changed the batch size.
    "crops.n_local": 4,
    "data.num_workers": 0,
    "loss.koleo_weight": 0.0,
    "model.drop_path_rate": 0.0,
    "checkpoint.every_n_steps": 3,
}


def _free_port() -> int:
    with socket.socket() as sock:  # loopback only: the two test processes talk to each other
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(
    index: Path, out: Path, overrides: dict, world: int, stop_at: int | None = None
) -> None:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(
            {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "WORLD_SIZE": str(world),
                "NODE_RANK": "0",
                "LOCAL_RANK": str(rank),
                "RANK": str(rank),
                "OMP_NUM_THREADS": "1",
            }
        )
        if world == 1:
            env = {k: v for k, v in env.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
        cmd = [sys.executable, str(WORKER), str(index), str(out), json.dumps(overrides)]
        cmd += [str(stop_at)] if stop_at else []
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()[-3000:]


@pytest.fixture(scope="module")
def one_process(shard_index, tmp_path_factory) -> Path:
    """The reference run: one process, the whole batch of 4."""
    out = tmp_path_factory.mktemp("one") / "run"
    _launch(shard_index, out, {**COMMON, "data.batch_size": 4}, world=1)
    return out


def _assert_same_run(a_dir: Path, b_dir: Path, *, rtol: float, atol: float) -> None:
    a_metrics, b_metrics = (pd.read_csv(d / "metrics.csv") for d in (a_dir, b_dir))
    assert b_metrics["step"].tolist() == a_metrics["step"].tolist()
    for term in ("total", "dino", "ibot"):
        pd.testing.assert_series_equal(a_metrics[term], b_metrics[term], rtol=rtol, atol=atol)
    a, b = (load_file(d / "encoder.safetensors") for d in (a_dir, b_dir))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "compile_trunk"), [("ddp", False), ("fsdp", True)])
def test_two_cpu_processes_match_one_process(
    shard_index, one_process, tmp_path, strategy, compile_trunk
):
    """Per-step losses and the exported teacher agree between 2 ranks x 2 and 1 eager rank
    x 4.

    Under FSDP every block, backbone and head of student and teacher is sharded over the
    two ranks, so this also checks the gathered forward, the sharded AdamW step, clipping
    on sharded gradients and the EMA update on matching shards; with its trunks compiled by
    inductor (C++ on the CPU), it also checks that compiling changes nothing.
    """
    two = {**COMMON, "data.batch_size": 2, "trainer.strategy": strategy, "trainer.devices": 2}
    _launch(shard_index, tmp_path / "two", {**two, "trainer.compile": compile_trunk}, world=2)
    assert pd.read_csv(tmp_path / "two" / "metrics.csv")["step"].tolist() == [1, 2, 3]
    _assert_same_run(one_process, tmp_path / "two", rtol=1e-4, atol=1e-5)
    if compile_trunk:  # dynamo really captured the trunks, on both ranks
        for rank in (0, 1):
            graphs = json.loads((tmp_path / "two" / f"dynamo.rank{rank}.json").read_text())
            assert graphs["unique_graphs"] > 0, rank


@pytest.mark.slow
def test_fsdp_bf16_resumed_equals_uninterrupted_with_high_res_phase(shard_index, tmp_path):
    """FSDP with bf16 weights gathered: a run stopped at step 2 and resumed from its full
    checkpoint ends where the uninterrupted run does, through the 160-px high-res phase."""
    fsdp = {
        **COMMON,
        "schedule.total_steps": 4,
        "checkpoint.every_n_steps": 2,
        "highres.steps": 1,
        "highres.global_size": 160,
        "highres.local_size": 64,
        "data.batch_size": 2,
        "trainer.strategy": "fsdp",
        "trainer.devices": 2,
        "trainer.precision": "bf16-mixed",
    }
    _launch(shard_index, tmp_path / "straight", fsdp, world=2)
    _launch(shard_index, tmp_path / "resumed", fsdp, world=2, stop_at=2)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", rtol=1e-5, atol=1e-6)
    sidecar = json.loads((tmp_path / "resumed" / "pretrain.json").read_text())
    assert sidecar["extra"]["resumed_from_step"] == 2
    assert json.loads((tmp_path / "resumed" / "encoder.json").read_text())["img_size"] == 160


IBOT_WORKER = Path(__file__).with_name("ibot_ranks_worker.py")


def _run_ranks(index: Path, out: Path, world: int) -> list[dict]:
    port = str(_free_port())
    procs = []
    for rank in range(world) if world > 1 else [1]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update({"RANK": str(rank), "OMP_NUM_THREADS": "1"})
        if world > 1:
            env.update({"WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        cmd = [sys.executable, str(IBOT_WORKER), str(index), str(out / f"rank{rank}.json")]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    results = []
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()[-3000:]
    for path in sorted(out.glob("rank*.json")):
        results.append(json.loads(path.read_text()))
    return results


@pytest.mark.slow
def test_ddp_rank_without_masked_crops_joins_ibot_centering(shard_index, tmp_path):
    """A rank whose crops are all unmasked still joins iBOT's Sinkhorn all-reduce.

    Rank 1's iBOT loss then equals the one it gets alone, since rank 0 adds no token.
    """
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    rank0, rank1 = _run_ranks(shard_index, tmp_path / "two", world=2)
    (alone,) = _run_ranks(shard_index, tmp_path / "one", world=1)
    assert rank0["ibot"] == 0.0
    assert rank1["ibot"] > 0.0
    assert rank1["ibot"] == pytest.approx(alone["ibot"], rel=1e-5)


@pytest.mark.slow
def test_ddp_with_ibot_off_trains(shard_index, tmp_path):
    """With iBOT off the mask token gets no gradient; DDP must not stop at the first step
    on the unused parameter (it did, advising a strategy name the config refuses)."""
    two = {
        **COMMON,
        "loss.ibot_weight": 0.0,
        "data.batch_size": 2,
        "trainer.strategy": "ddp",
        "trainer.devices": 2,
    }
    _launch(shard_index, tmp_path / "two", two, world=2)
    metrics = pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3]
    assert (metrics["ibot"] == 0.0).all()
