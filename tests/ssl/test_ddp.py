"""DDP on two CPU processes (gloo) trains exactly like one process with the same global batch."""

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
    "crops.n_local": 2,
    "data.num_workers": 0,
    "loss.koleo_weight": 0.0,
    "model.drop_path_rate": 0.0,
    "checkpoint.every_n_steps": 3,
}


def _free_port() -> int:
    with socket.socket() as sock:  # loopback only: the two test processes talk to each other
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(index: Path, out: Path, overrides: dict, world: int) -> None:
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
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()[-3000:]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(shard_index, tmp_path):
    """Per-step losses and the exported teacher agree between 2 ranks x 2 and 1 rank x 4."""
    _launch(shard_index, tmp_path / "one", {**COMMON, "data.batch_size": 4}, world=1)
    ddp = {**COMMON, "data.batch_size": 2, "trainer.strategy": "ddp", "trainer.devices": 2}
    _launch(shard_index, tmp_path / "two", ddp, world=2)

    one, two = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("one", "two"))
    assert two["step"].tolist() == [1, 2, 3]
    for term in ("total", "dino", "ibot"):
        pd.testing.assert_series_equal(one[term], two[term], rtol=1e-4, atol=1e-5)
    a, b = (load_file(tmp_path / d / "encoder.safetensors") for d in ("one", "two"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


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
