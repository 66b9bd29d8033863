"""``python -m unipipe.ssl.cli``: one process, ranks started by srun, ranks started by Lightning.

The launches train the tiny recipe for 3 steps on real shards; 2 ranks x 2 patches must give
the losses and teacher of 1 process x 4 patches (the DDP test's criterion, tests/ssl/test_ddp.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.ssl.test_ddp import COMMON, _assert_same_run, _free_port
from unipipe.errors import ConfigError
from unipipe.ssl import PretrainConfig
from unipipe.ssl.cli import (
    check_srun_tasks,
    launch_command,
    main,
    rank_label,
    rank_log_path,
    threads_per_rank,
)

TINY_YAML = Path(__file__).parents[2] / "config" / "pretrain" / "tiny_cpu.yaml"
# Variables by which srun, torchrun or Lightning's launcher tell a process its rank: none may
# leak from the test's own environment into a launch.
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR")
_LAUNCH_VARS += ("MASTER_PORT", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED")


def _config(**overrides) -> PretrainConfig:
    return PretrainConfig.from_yaml(TINY_YAML, overrides)


def _srun_env(rank: int, ntasks: int = 2, nodes: int = 1, **extra: str) -> dict[str, str]:
    """What srun exports to task ``rank`` of a one-node step (the part Lightning reads)."""
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "pretrain",
        "SLURM_NTASKS": str(ntasks),
        "SLURM_NTASKS_PER_NODE": str(ntasks // nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_NODEID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODELIST": "127.0.0.1",
        "SLURMD_NODENAME": "localhost",
        **extra,
    }


def _clean_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k not in _LAUNCH_VARS
    }
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli_args(index: Path, out: Path, overrides: dict) -> list[str]:
    return [
        *("--index", str(index), "--config", str(TINY_YAML)),
        *("--overrides", json.dumps(overrides), "--out-dir", str(out)),
        *("--encoder-safetensors", str(out / "encoder.safetensors")),
        *("--encoder-json", str(out / "encoder.json")),
        *("--metrics-csv", str(out / "metrics.csv"), "--sidecar", str(out / "pretrain.json")),
        *("--seed", "0", "--threads", "2", "--log", str(out.parent / "logs" / "pretrain.log")),
    ]


def _run_cli(index: Path, out: Path, overrides: dict, envs: list[dict[str, str]]) -> None:
    """Start the CLI once per environment in ``envs`` (one per rank srun would start)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "unipipe.ssl.cli", *_cli_args(index, out, overrides)],
            env={**_clean_env(), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for env in envs
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()[-3000:]


def _logs(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out.parent / "logs").glob("*.log"))}


# --- the rule's launch line -------------------------------------------------------------------


def test_launch_command_without_mpi_is_the_interpreter():
    """Locally and for a one-task SLURM job the rule runs the interpreter itself."""
    assert launch_command({}, threads=2, python="/opt/py env/bin/python") == (
        "'/opt/py env/bin/python'"
    )
    assert launch_command({"mpi": ""}, threads=2, python="python") == "python"


def test_launch_command_with_srun_states_nodes_tasks_and_cores():
    """With mpi: srun, srun starts one task per GPU on each node, with that task's cores."""
    resources = {"mpi": "srun", "nodes": 4, "tasks_per_node": 8, "cpus_per_task": 12}
    assert launch_command(resources, threads=2, python="python") == (
        "srun --nodes=4 --ntasks-per-node=8 --cpus-per-task=12 --kill-on-bad-exit=1 python"
    )
    # Without cpus_per_task the executor plugin asks for `threads` CPUs per task.
    one_node = {"mpi": "srun --mpi=none", "tasks_per_node": 2}
    assert launch_command(one_node, threads=3, python="python") == (
        "srun --mpi=none --nodes=1 --ntasks-per-node=2 --cpus-per-task=3 --kill-on-bad-exit=1"
        " python"
    )


@pytest.mark.parametrize(
    ("resources", "names"),
    [
        ({"mpi": "mpirun", "tasks_per_node": 2}, "mpi: srun"),
        ({"mpi": "srun"}, "tasks_per_node"),
        ({"mpi": "srun", "tasks_per_node": "2"}, "tasks_per_node"),
    ],
)
def test_launch_command_refuses_what_srun_cannot_start(resources, names):
    """A launcher other than srun, or srun without tasks per node, is refused naming the key."""
    with pytest.raises(ConfigError, match=names):
        launch_command(resources, threads=2, python="python")


# --- ranks, logs and threads from the launcher's environment ----------------------------------


@pytest.mark.parametrize(
    ("env", "label"),
    [
        ({}, "0"),
        (_srun_env(1), "1"),
        ({**_srun_env(1), "SLURM_JOB_NAME": "interactive"}, "0"),  # Lightning ignores SLURM
        ({"RANK": "3", "LOCAL_RANK": "1"}, "3"),  # torchrun
        ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, "1"),  # Lightning's child
        ({"NODE_RANK": "1"}, "1.0"),  # node 1 started by hand: its rank needs the recipe
    ],
)
def test_rank_label_reads_the_launcher(env, label):
    """The rank comes from srun, torchrun or Lightning's launcher, in that order."""
    assert rank_label(env) == label


def test_rank_log_path_keeps_the_rule_log_for_rank_zero():
    """Rank 0 writes the rule's log; rank 1 a sibling named by its rank; no log, no file."""
    assert rank_log_path("logs/pretrain/demo.log", "0") == "logs/pretrain/demo.log"
    assert rank_log_path("logs/pretrain/demo.log", "1") == Path("logs/pretrain/demo.rank1.log")
    assert rank_log_path(None, "1") is None


def test_check_srun_tasks_refuses_tasks_unlike_the_recipe():
    """One SLURM task for a 2-device recipe (mpi forgotten) stops naming the keys to set."""
    two = _config(**{"trainer.devices": 2, "trainer.strategy": "ddp"})
    check_srun_tasks(two, _srun_env(0, ntasks=2), "tiny.yaml")
    check_srun_tasks(two, {}, "tiny.yaml")  # not under srun: Lightning starts the ranks
    with pytest.raises(ConfigError, match=r"trainer\.devices=2.*tasks_per_node.*mpi: srun"):
        check_srun_tasks(two, _srun_env(0, ntasks=1), "tiny.yaml")
    with pytest.raises(ConfigError, match=r"trainer\.num_nodes=1"):
        check_srun_tasks(two, _srun_env(0, ntasks=4, nodes=2), "tiny.yaml")
    # strategy single trains on one device whatever trainer.devices says
    single = _config(**{"trainer.devices": 2, "trainer.strategy": "single"})
    check_srun_tasks(single, _srun_env(0, ntasks=1), "tiny.yaml")


def test_threads_per_rank_shares_the_jobs_cores():
    """Local ranks split the job's threads; an srun task keeps them up to its own cores."""
    two = _config(**{"trainer.devices": 2, "trainer.strategy": "ddp"})
    assert threads_per_rank(4, _config(), {}) == 4
    assert threads_per_rank(4, two, {}) == 2
    assert threads_per_rank(1, two, {}) == 1
    assert threads_per_rank(4, two, _srun_env(0, SLURM_CPUS_PER_TASK="8")) == 4
    assert threads_per_rank(4, two, _srun_env(0, SLURM_CPUS_PER_TASK="1")) == 1


def test_cli_refuses_overrides_that_are_not_a_json_object(shard_index, tmp_path):
    """Bad --overrides end with exit 1 and one line naming the option and the config key."""
    args = _cli_args(shard_index, tmp_path / "run", {})
    args[args.index("--overrides") + 1] = "[1, 2]"
    proc = subprocess.run(
        [sys.executable, "-m", "unipipe.ssl.cli", *args],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("unipipe: --overrides is '[1, 2]'")
    assert "pretrain.overrides" in (tmp_path / "logs" / "pretrain.log").read_text()


@pytest.fixture
def cli_args(tmp_path, monkeypatch) -> dict[str, str]:
    """Arguments of a CLI run whose input files are there, with no launcher variables set.

    Each case below fails before any shard is read, so the index is an empty file. The
    log set-up is left out: it would replace the root logger's handlers, pytest's too.
    """
    for name in list(os.environ):
        if name.startswith("SLURM") or name in _LAUNCH_VARS:
            monkeypatch.delenv(name)
    monkeypatch.setattr("unipipe.logs.setup_logging", lambda path: None)
    (tmp_path / "index.parquet").write_bytes(b"")
    (tmp_path / "index.csv").write_text("shard\n")
    out = tmp_path / "run"
    args = _cli_args(tmp_path / "index.parquet", out, {})
    return dict(zip(args[::2], args[1::2], strict=True))


@pytest.mark.parametrize(
    ("change", "env", "words"),
    [
        ({"--config": "{tmp}/missing.yaml"}, {}, r"--config \S+missing\.yaml does not exist"),
        ({"--config": "{tmp}"}, {}, r"--config \S+ is a folder"),
        ({"--index": "{tmp}/missing.parquet"}, {}, r"--index \S+ does not exist.*build_dataset"),
        ({"--index": "{tmp}"}, {}, r"--index \S+ is a folder"),
        ({"--index": "{tmp}/index.csv"}, {}, r"--index \S+index\.csv is no \.parquet file"),
        ({}, {"SLURM_NTASKS": "abc"}, r"SLURM_NTASKS is 'abc'.*srun"),
        ({}, {"SLURM_NTASKS": "2", "SLURM_PROCID": "one"}, r"SLURM_PROCID is 'one'"),
        ({"--seed": str(2**32)}, {}, r"--seed 4294967296 .*0 to 4294967295.*config key seed"),
        ({"--seed": "-1"}, {}, r"--seed -1 "),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(cli_args, tmp_path, monkeypatch, change, env, words):
    """A missing or wrong input file, a SLURM variable that is no count or a seed numpy
    refuses ends the CLI with its one-line error naming the argument, not a traceback."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = cli_args | {key: value.format(tmp=tmp_path) for key, value in change.items()}
    with pytest.raises(SystemExit) as stop:
        main([word for pair in args.items() for word in pair])
    message = str(stop.value.code)
    assert message.startswith("unipipe: ")
    assert "\n" not in message
    assert re.search(words, message), message


# --- training through the CLI -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_one_process(shard_index, tmp_path_factory) -> Path:
    """The reference: the CLI started once, one device, the whole batch of 4."""
    out = tmp_path_factory.mktemp("cli_one") / "run"
    _run_cli(shard_index, out, {**COMMON, "data.batch_size": 4}, envs=[{}])
    return out


@pytest.mark.slow
def test_cli_started_by_srun_per_rank_matches_one_process(shard_index, cli_one_process, tmp_path):
    """Two CLI processes with the variables srun gives its tasks train as one DDP run of
    2 ranks x 2 (SLURMEnvironment) and match 1 process x 4; each rank logs to its own file."""
    two = {
        **COMMON,
        "data.batch_size": 2,
        "trainer.accelerator": "cpu",
        "trainer.strategy": "ddp",
        "trainer.devices": 2,
    }
    port = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    envs = [_srun_env(rank, SLURM_CPUS_PER_TASK="1", **port) for rank in range(2)]
    out = tmp_path / "run"
    _run_cli(shard_index, out, two, envs)

    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [1, 2, 3]
    _assert_same_run(cli_one_process, out, rtol=1e-4, atol=1e-5)
    logs = _logs(out)
    assert set(logs) == {"pretrain.log", "pretrain.rank1.log"}
    assert "rank 0: srun task 0 of 2 (SLURM job 4242" in logs["pretrain.log"]
    assert "rank 1: srun task 1 of 2" in logs["pretrain.rank1.log"]
    assert "srun task 1" not in logs["pretrain.log"]
    assert "phase to step 3" in logs["pretrain.log"]


@pytest.mark.slow
def test_cli_lightning_launcher_starts_the_second_rank(shard_index, cli_one_process, tmp_path):
    """One CLI process with trainer.devices 2 and no launcher around it: Lightning runs the
    same command again for rank 1, and the pair matches 1 process x 4."""
    two = {
        **COMMON,
        "data.batch_size": 2,
        "trainer.accelerator": "cpu",
        "trainer.strategy": "ddp",
        "trainer.devices": 2,
    }
    out = tmp_path / "run"
    # A loopback port chosen here: Lightning would otherwise look for one on every interface.
    _run_cli(
        shard_index,
        out,
        two,
        envs=[{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}],
    )

    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [1, 2, 3]
    _assert_same_run(cli_one_process, out, rtol=1e-4, atol=1e-5)
    logs = _logs(out)
    assert set(logs) == {"pretrain.log", "pretrain.rank1.log"}
    assert "rank 0: started directly" in logs["pretrain.log"]
    assert "rank 1: started by a launcher (LOCAL_RANK 1)" in logs["pretrain.rank1.log"]
    # Each rank computes with its share of the job's 2 threads.
    assert "compute threads limited to 1" in logs["pretrain.log"]
    assert "phase to step 3" in logs["pretrain.log"]
