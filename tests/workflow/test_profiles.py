"""profiles/slurm: the pretrain entries submit and launch what their comments say."""

from __future__ import annotations

import re
from types import SimpleNamespace

import yaml
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string

from tests.conftest import REPO
from unipipe.ssl.cli import launch_command

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"


class _Resources(dict):
    """A job's resources as the executor plugin reads them (``.get`` and attributes)."""

    __getattr__ = dict.__getitem__


def _pretrain_entries() -> tuple[dict, dict]:
    """The active pretrain entry and the commented multi-GPU one, parsed as YAML."""
    text = PROFILE.read_text()
    active = yaml.safe_load(text)["set-resources"]["pretrain"]
    block = re.search(r"^  # pretrain:\n((?:  #   .*\n)+)", text, re.M)
    assert block, f"{PROFILE} has no commented `# pretrain:` entry"
    lines = [line.replace("  #   ", "  ", 1) for line in block.group(1).splitlines()]
    return active, yaml.safe_load("pretrain:\n" + "\n".join(lines))["pretrain"]


def _sbatch(resources: dict, threads: int = 2) -> str:
    job = SimpleNamespace(resources=_Resources(resources), threads=threads)
    params = {
        "run_uuid": "run",
        "slurm_logfile": "log",
        "comment_str": "rule_pretrain",
        "account": "-A acct",
        "partition": "-p gpu",
        "workdir": "/work",
    }
    return get_submit_command(job, params) + set_gres_string(job)


def test_slurm_profile_one_gpu_pretrain_is_one_task_with_one_gpu():
    """The active entry asks for one GPU and no task layout: the rule adds no srun."""
    active, _ = _pretrain_entries()
    sbatch = _sbatch(active)

    assert "--gpus=EDIT_a100:1" in sbatch
    assert "--ntasks-per-node" not in sbatch
    assert "--nodes" not in sbatch
    assert launch_command(active, threads=2, python="python") == "python"


def test_slurm_profile_multi_gpu_pretrain_gives_the_documented_lines():
    """The commented entry submits N nodes x G tasks with G GPUs per node (no job-wide
    --gpus, no --ntasks-per-gpu) and the rule starts one task per GPU through srun."""
    active, multi = _pretrain_entries()
    sbatch = _sbatch(multi)
    nodes, per_node, cpus = multi["nodes"], multi["tasks_per_node"], multi["cpus_per_task"]
    flags = f"--nodes={nodes} --ntasks-per-node={per_node} --cpus-per-task={cpus}"

    assert flags in sbatch
    assert f"--gres=gpu:EDIT_a100:{per_node}" in sbatch
    assert "--gpus" not in sbatch
    assert "--ntasks-per-gpu" not in sbatch
    assert "--signal=USR1@90 --requeue" in sbatch
    assert launch_command(multi, threads=2, python="python") == (
        f"srun {flags} --kill-on-bad-exit=1 python"
    )
    # Replacing the one-GPU entry keeps its partition, time, memory and requeue settings.
    assert set(active) - set(multi) == {"gpu_model"}
