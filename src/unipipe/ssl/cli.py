"""Pretraining from the command line: ``python -m unipipe.ssl.cli --index ... --log ...``.

The pretrain rule runs this module, and the same command serves every layout:

- one device: one process;
- G devices on one machine without a scheduler (``trainer.devices: G``): one process, and
  Lightning's launcher starts the other G - 1 ranks by running this same command again
  with ``LOCAL_RANK`` set;
- SLURM, N nodes x G GPUs: ``srun`` starts it once per GPU (``launch_command`` builds that
  line from the job's resources) and Lightning reads each task's place from
  ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID`` and ``SLURM_NTASKS``.

Rank 0 writes the rule's log; every other rank writes ``<stem>.rank<R><suffix>`` next to it,
so that no rank truncates another's log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unipipe.errors import ConfigError
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads
from unipipe.ssl.config import PretrainConfig

__all__ = [
    "check_arguments",
    "check_srun_tasks",
    "launch_command",
    "main",
    "rank_label",
    "rank_log_path",
    "started_by_srun",
    "threads_per_rank",
]

# Named, not __name__: run with -m this module is __main__.
logger = logging.getLogger("unipipe.ssl.cli")

# Job names under which Lightning treats a SLURM allocation as interactive and ignores it.
_INTERACTIVE_JOB_NAMES = ("bash", "interactive")
# SLURM's task variables read here or by Lightning, and the least value each can take.
_SLURM_COUNTS = {
    "SLURM_NTASKS": 1,
    "SLURM_NNODES": 1,
    "SLURM_CPUS_PER_TASK": 1,
    "SLURM_PROCID": 0,
    "SLURM_LOCALID": 0,
    "SLURM_NODEID": 0,
}
# numpy seeds its generators with 32 bits: a larger --seed fails in the first data loader.
SEED_MAX = 2**32 - 1


def started_by_srun(env: Mapping[str, str]) -> bool:
    """Whether SLURM started this process as a task of a step (Lightning's own test)."""
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in _INTERACTIVE_JOB_NAMES


def _slurm_count(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    """A SLURM task variable as a number (``default`` when unset).

    Raises:
        ConfigError: it is set but is no count SLURM would give (``SLURM_NTASKS=abc``).
    """
    value = env.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < _SLURM_COUNTS[name]:
        raise ConfigError(
            f"{name} is {value!r}, not a count SLURM would set (a whole number >= "
            f"{_SLURM_COUNTS[name]}); as SLURM_NTASKS is set, this process is read (here and "
            "by Lightning) as a task that srun started: start it with srun, which sets these "
            "variables, or unset the SLURM_* variables to train without SLURM"
        )
    return number


def rank_label(env: Mapping[str, str]) -> str:
    """This process's global rank as its launcher announced it, before any Trainer exists.

    ``"0"`` for the process that writes the rule's log. A process that Lightning's launcher
    started on a node other than 0 (a multi-node run started by hand, without SLURM) cannot
    know its global rank without the recipe, so it is named ``<node>.<local rank>``.
    """
    if started_by_srun(env):
        return env.get("SLURM_PROCID", "0")
    if "RANK" in env:  # torchrun and other torch.distributed launchers
        return env["RANK"]
    node, local = env.get("NODE_RANK", "0"), env.get("LOCAL_RANK", "0")
    return local if node == "0" else f"{node}.{local}"


def rank_log_path(log: str | os.PathLike[str] | None, label: str) -> str | os.PathLike[str] | None:
    """The log file of the rank ``label``: the rule's own for rank 0, a sibling otherwise."""
    if log is None or label == "0":
        return log
    path = Path(log)
    return path.with_name(f"{path.stem}.rank{label}{path.suffix}")


def _devices_per_node(config: PretrainConfig) -> int | str:
    t = config.trainer
    # build_trainer runs strategy "single" on one device whatever trainer.devices says.
    return 1 if t.strategy == "single" else t.devices


def check_srun_tasks(config: PretrainConfig, env: Mapping[str, str], recipe: str) -> None:
    """Refuse a SLURM step whose tasks are not the recipe's ranks.

    Lightning would otherwise wait for ranks that never start (more devices than tasks) or
    stop with a hint about flags the workflow does not expose.

    Raises:
        ConfigError: SLURM_NTASKS or SLURM_NNODES disagree with trainer.devices x num_nodes.
    """
    if not started_by_srun(env):
        return
    devices, nodes = _devices_per_node(config), config.trainer.num_nodes
    if not isinstance(devices, int):  # "auto": Lightning counts the node's devices itself
        return
    ntasks = _slurm_count(env, "SLURM_NTASKS")
    nnodes = _slurm_count(env, "SLURM_NNODES", nodes)
    if ntasks == devices * nodes and nnodes == nodes:
        return
    raise ConfigError(
        f"SLURM started {ntasks} task(s) on {nnodes} node(s) (SLURM_NTASKS, SLURM_NNODES) but "
        f"{recipe} with pretrain.overrides asks for trainer.devices={devices} per node x "
        f"trainer.num_nodes={nodes}; one task trains on one device, so set trainer.devices to "
        "the profile's tasks_per_node and trainer.num_nodes to its nodes (and `mpi: srun` "
        "for more than one task, see profiles/slurm/config.yaml), or change the profile"
    )


def threads_per_rank(threads: int, config: PretrainConfig, env: Mapping[str, str]) -> int:
    """Compute threads for this process.

    A task that srun started has cores of its own (``SLURM_CPUS_PER_TASK``) and keeps
    ``threads`` up to that many. Ranks that Lightning's launcher (or torchrun) starts on this
    machine share the job's ``threads`` cores: each gets its part, at least one.
    """
    threads = max(1, int(threads))
    if started_by_srun(env):
        cpus = _slurm_count(env, "SLURM_CPUS_PER_TASK")
        return min(threads, cpus) if cpus else threads
    devices = _devices_per_node(config)
    return max(1, threads // devices) if isinstance(devices, int) else threads


def launch_command(resources: Mapping[str, Any], *, threads: int, python: str) -> str:
    """The start of the pretrain rule's command: the interpreter, under srun if asked.

    Without the resource ``mpi`` (local runs, one-GPU SLURM jobs) it is the interpreter
    alone; the executor plugin's job step already runs the rule in a one-task ``srun``, or
    Lightning starts the extra local ranks. With ``mpi: srun`` the plugin submits the job
    with ``--nodes`` and ``--ntasks-per-node`` but runs the rule without an ``srun`` of its
    own and without SLURM's task variables, so a bare ``srun`` would start one task: the
    layout is stated again here, one task per GPU, each with its cores, and a failed rank
    ends the step instead of leaving the others waiting in a collective.

    Raises:
        ConfigError: ``mpi`` is not an srun command, or ``tasks_per_node`` is missing.
    """
    command = shlex.quote(python)
    mpi = resources.get("mpi")
    if not mpi:
        return command
    words = shlex.split(str(mpi))
    if not words or Path(words[0]).name != "srun":
        raise ConfigError(
            f"resource mpi of rule pretrain is {mpi!r}; pretraining starts its ranks with "
            "srun (Lightning reads SLURM's task variables): set `mpi: srun` under "
            "set-resources: pretrain: in the profile, or remove it for one task"
        )
    tasks_per_node = resources.get("tasks_per_node")
    if not isinstance(tasks_per_node, int) or tasks_per_node < 1:
        raise ConfigError(
            f"resource mpi of rule pretrain is {mpi!r} but tasks_per_node is "
            f"{tasks_per_node!r}; set tasks_per_node (one task per GPU of a node, the "
            "recipe's trainer.devices) next to it under set-resources: pretrain: in the profile"
        )
    cpus = resources.get("cpus_per_task")
    cpus = threads if cpus is None else cpus
    flags = [f"--nodes={resources.get('nodes') or 1}", f"--ntasks-per-node={tasks_per_node}"]
    # A negative cpus_per_task tells the executor plugin to leave CPUs to the partition.
    flags += [f"--cpus-per-task={cpus}"] if cpus > 0 else []
    return " ".join([str(mpi), *flags, "--kill-on-bad-exit=1", command])


def parse_overrides(text: str) -> dict[str, Any]:
    """The recipe overrides given as a JSON object (the rule passes pretrain.overrides).

    Raises:
        ConfigError: the text is not a JSON object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"--overrides is not JSON ({err}): {text!r}; pass an object of recipe keys such as "
            "'{\"schedule.total_steps\": 6}' (the workflow passes config key pretrain.overrides)"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"--overrides is {text!r}, not a JSON object; pass recipe keys and values such as "
            "'{\"schedule.total_steps\": 6}' (config key pretrain.overrides)"
        )
    return value


def _require_file(option: str, path: str, fix: str) -> None:
    if not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "does not exist"
        raise ConfigError(f"{option} {path} {what}; {fix}")


def check_arguments(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Refuse input files, a seed and SLURM variables that training would fail on later,
    with a traceback from deep inside zarr, numpy or Lightning.

    Raises:
        ConfigError: naming the argument or variable and the fix.
    """
    _require_file(
        "--config",
        args.config,
        "pass a recipe YAML such as config/pretrain/tiny_cpu.yaml (the workflow passes config "
        "key pretrain.config)",
    )
    index_fix = (
        "pass the shard index parquet that build_dataset writes (results/shards/index.parquet "
        "by default)"
    )
    if Path(args.index).suffix != ".parquet" and not Path(args.index).is_dir():
        raise ConfigError(f"--index {args.index} is no .parquet file; {index_fix}")
    _require_file("--index", args.index, index_fix)
    if not 0 <= args.seed <= SEED_MAX:
        raise ConfigError(
            f"--seed {args.seed} is not a seed numpy accepts (0 to {SEED_MAX}); pass one in "
            "that range (the workflow passes config key seed)"
        )
    if started_by_srun(env):
        for name in _SLURM_COUNTS:
            _slurm_count(env, name)


def _launch_note(env: Mapping[str, str]) -> str:
    if started_by_srun(env):
        return (
            f"srun task {env.get('SLURM_PROCID', '0')} of {env['SLURM_NTASKS']} (SLURM job "
            f"{env.get('SLURM_JOB_ID', '?')}, node {env.get('SLURMD_NODENAME', '?')})"
        )
    if "RANK" in env or "LOCAL_RANK" in env:
        return f"started by a launcher (LOCAL_RANK {env.get('LOCAL_RANK', '?')})"
    return "started directly; Lightning starts any further local ranks"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: run_pretrain's arguments, plus threads and the log file."""
    parser = argparse.ArgumentParser(
        prog="python -m unipipe.ssl.cli",
        description="Train DINOv2 on curated shards and export the teacher backbone "
        "(run once per rank by srun, or once per machine).",
    )
    parser.add_argument("--index", required=True, help="the shard index parquet")
    parser.add_argument("--config", required=True, help="the DINOv2 recipe YAML")
    parser.add_argument(
        "--overrides", default="{}", help="JSON object of recipe keys to override (dotted)"
    )
    parser.add_argument("--out-dir", required=True, help="checkpoints and the metrics stream")
    parser.add_argument("--encoder-safetensors", required=True, help="teacher weights to write")
    parser.add_argument("--encoder-json", required=True, help="encoder description to write")
    parser.add_argument("--metrics-csv", required=True, help="per-step metrics to write")
    parser.add_argument("--sidecar", required=True, help="provenance JSON to write")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="compute threads of the job on this machine (each srun task: up to its cores)",
    )
    parser.add_argument(
        "--log", default=None, help="rank 0's log file (others: <stem>.rank<R>); default stderr"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run pretraining as this process's rank; exit 1 with one line on a UnipipeError."""
    args = parse_args(argv)
    env = os.environ
    with stage_logging(rank_log_path(args.log, rank_label(env))):
        check_arguments(args, env)
        config = PretrainConfig.from_yaml(args.config, parse_overrides(args.overrides))
        check_srun_tasks(config, env, args.config)
        logger.info("rank %s: %s", rank_label(env), _launch_note(env))
        limit_threads(threads_per_rank(args.threads, config, env))
        # Here, not at the top: the workflow imports launch_command when it parses the
        # Snakefile, and the training stack (torch, Lightning) would slow every parse.
        from unipipe.ssl.train import run_pretrain

        run_pretrain(
            args.index,
            config=config,
            out_dir=args.out_dir,
            encoder_safetensors=args.encoder_safetensors,
            encoder_json=args.encoder_json,
            metrics_csv=args.metrics_csv,
            sidecar=args.sidecar,
            seed=args.seed,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
