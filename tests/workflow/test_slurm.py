"""The demo DAG on a real local SLURM: every job through sbatch, same outputs as a local run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, SLIDES
from tests.workflow.dag import make_workdir, planned_rules

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EXEC = REPO / "ci" / "slurm" / "exec.sh"
PROFILE = REPO / "profiles" / "slurm-ci"
STATE = Path(os.environ.get("UNIPIPE_SLURM_DIR", "/tmp/unipipe-slurm"))
CURATE_RULES = (
    "segment_tissue",
    "detect_artefacts",
    "tile_slide",
    "select_patches",
    "write_shards",
)
TEST_SLIDES = {
    "CMU-1-Small-Region": SLIDES / "CMU-1-Small-Region.svs",
    "OS-1-detail": SLIDES / "OS-1-detail.ome.tif",
}
SACCT_FIELDS = ("JobID", "State", "Partition", "AllocTRES", "Comment")


def _why_no_slurm() -> str | None:
    """None when a controller of the CI cluster answers, else why the tests are skipped."""
    if not (REPO / "Snakefile").is_file():
        return f"no {REPO / 'Snakefile'} yet"
    if shutil.which("sinfo") is None:
        return "SLURM client tools are not installed; `bash ci/slurm/start.sh` (run by .ci/run) installs and starts a local SLURM"
    try:
        proc = subprocess.run(
            ["bash", str(EXEC), "sinfo", "-h", "-o", "%P"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 30 s (cluster state {STATE})"
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"no SLURM controller answers for UNIPIPE_SLURM_DIR={STATE}: {reason[0]}"
    partitions = {p.rstrip("*") for p in proc.stdout.split()}
    if not {"debug", "gpu"} <= partitions:
        return (
            f"the cluster has partitions {sorted(partitions)}, the CI profile needs debug and gpu"
        )
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    """Skip the module, saying why, unless the CI cluster from ci/slurm/start.sh is up."""
    reason = _why_no_slurm()
    if reason:
        pytest.skip(f"SLURM tests skipped: {reason}")


def snakemake_cmd(
    workdir: Path, *args: str, on_slurm: bool, configfiles: tuple[str, ...] = ()
) -> list[str]:
    """The project's Snakefile on ``workdir`` with its config copy; through sbatch if on_slurm.

    ``configfiles`` (names in ``workdir``) are merged over test.yaml and small.yaml.
    """
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config" / "test.yaml"),
        str(workdir / "small.yaml"),
        *(str(workdir / name) for name in configfiles),
        "--config",
        "slides=slides.tsv",
    ]
    if on_slurm:
        return ["bash", str(EXEC), *cmd, "--profile", str(PROFILE), *args]
    return [*cmd, "--cores", "2", *args]


def finish(
    workdir: Path, proc: subprocess.CompletedProcess, *, check: bool = True
) -> subprocess.CompletedProcess:
    """Keep the run's output next to it; on failure raise with the failed jobs' logs."""
    n = len(list(workdir.glob("snakemake_*.log")))
    (workdir / f"snakemake_{n}.log").write_text(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}) in {workdir}:\n{proc.stderr[-6000:]}"
            + "".join(f"\n--- {p}:\n{p.read_text()[-3000:]}" for p in failed_logs(workdir, proc))
        )
    return proc


def slurm_snakemake(
    workdir: Path, *args: str, check: bool = True, configfiles: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run the DAG in ``workdir`` through sbatch with profiles/slurm-ci."""
    cmd = snakemake_cmd(workdir, *args, on_slurm=True, configfiles=configfiles)
    return finish(
        workdir, subprocess.run(cmd, capture_output=True, text=True, timeout=1800), check=check
    )


def failed_logs(workdir: Path, proc: subprocess.CompletedProcess) -> list[Path]:
    """The log files Snakemake reported for failed jobs (rule logs and SLURM job logs)."""
    paths = [
        Path(p) if Path(p).is_absolute() else workdir / p
        for line in re.findall(r"log: (.+?) \(check log file", proc.stdout + proc.stderr)
        for p in line.split(", ")
    ]
    return [p for p in dict.fromkeys(paths) if p.is_file()]


def sacct_jobs(proc: subprocess.CompletedProcess) -> list[dict[str, str]]:
    """The SLURM jobs (allocations, not steps) that one Snakemake run submitted, from sacct."""
    run_ids = re.findall(r"SLURM run ID: (\S+)", proc.stdout + proc.stderr)
    assert len(run_ids) == 1, "the executor logged no (or several) SLURM run IDs"
    out = subprocess.run(
        ["bash", str(EXEC), "sacct", "-X", "-n", "-P", "--name", run_ids[0], "-S", "now-1days"]
        + ["-o", ",".join(SACCT_FIELDS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [dict(zip(SACCT_FIELDS, line.split("|"), strict=True)) for line in out.splitlines()]


def submitted_job_ids(proc: subprocess.CompletedProcess) -> list[str]:
    """SLURM job ids the executor logged as submitted with sbatch."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)


def job_stats(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> number of jobs from the 'Job stats' table Snakemake prints first."""
    table = (proc.stdout + proc.stderr).split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def curation_is_grouped(config_dir: Path) -> bool:
    """Whether config.yaml, with test.yaml over it, groups each slide's curation chain."""
    value = False
    for name in ("config.yaml", "test.yaml"):
        cfg = yaml.safe_load((config_dir / name).read_text()) or {}
        value = cfg.get("execution", {}).get("group_curation", value)
    return bool(value)


def expected_submissions(stats: dict[str, int], n_slides: int, *, grouped: bool) -> int:
    """SLURM jobs for a DAG with these per-rule job counts: one per job, one per grouped chain."""
    jobs = {rule: n for rule, n in stats.items() if rule != "all"}
    if grouped:
        return sum(n for r, n in jobs.items() if r not in CURATE_RULES) + n_slides
    return sum(jobs.values())


def digest_tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# Both runs: every stage, but one evaluation protocol (fewer jobs on the 2-core CI node).
SMALL_CONFIG = "evaluate:\n  protocols: [knn]\n"


@pytest.fixture(scope="module")
def config_dir(slurm, tmp_path_factory) -> Path:
    """A copy of config/ taken once, so every run of this module sees the same config."""
    copy = tmp_path_factory.mktemp("config") / "config"
    shutil.copytree(REPO / "config", copy)
    return copy


def run_folder(root: Path, slides: dict[str, Path | str], config_dir: Path) -> Path:
    """A run folder: resources/ linked, the config copy, its own manifest and small.yaml."""
    workdir = make_workdir(root, slides)
    (workdir / "config").unlink()
    (workdir / "config").symlink_to(config_dir)
    (workdir / "small.yaml").write_text(SMALL_CONFIG)
    return workdir


@pytest.fixture(scope="module")
def runs(config_dir, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The small DAG on two real slides, locally (--cores 2) and on SLURM, side by side."""
    local_dir = run_folder(tmp_path_factory.mktemp("local"), TEST_SLIDES, config_dir)
    slurm_dir = run_folder(tmp_path_factory.mktemp("slurm"), TEST_SLIDES, config_dir)
    local = subprocess.Popen(
        snakemake_cmd(local_dir, on_slurm=False),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        remote = slurm_snakemake(slurm_dir)
    finally:
        stdout, stderr = local.communicate(timeout=1800)
    local_proc = subprocess.CompletedProcess(local.args, local.returncode, stdout, stderr)
    return {"local": (local_dir, finish(local_dir, local_proc)), "slurm": (slurm_dir, remote)}


@pytest.fixture(scope="module")
def local_run(runs) -> tuple[Path, subprocess.CompletedProcess]:
    """The local run: folder and finished process."""
    return runs["local"]


@pytest.fixture(scope="module")
def slurm_run(runs) -> tuple[Path, subprocess.CompletedProcess]:
    """The SLURM run: folder and finished process."""
    return runs["slurm"]


def test_slurm_every_job_went_through_sbatch_and_completed(slurm_run, local_run):
    """sacct lists one COMPLETED job per submission, as many as the DAG has jobs (or groups)."""
    _, proc = slurm_run
    jobs = sacct_jobs(proc)
    grouped = curation_is_grouped(slurm_run[0] / "config")
    expected = expected_submissions(job_stats(local_run[1]), len(TEST_SLIDES), grouped=grouped)

    assert sorted(j["JobID"] for j in jobs) == sorted(submitted_job_ids(proc))
    assert len(jobs) == expected, [j["Comment"] for j in jobs]
    assert {j["State"] for j in jobs} == {"COMPLETED"}, jobs
    dry = subprocess.run(
        snakemake_cmd(slurm_run[0], "-n", on_slurm=False), capture_output=True, text=True
    )
    assert planned_rules(dry) == set()


def test_slurm_pretrain_ran_on_gpu_partition_with_a_gpu(slurm_run):
    """The pretrain job ran on partition gpu with one (fake) GPU; the rest on debug."""
    _, proc = slurm_run
    jobs = sacct_jobs(proc)
    pretrain = [j for j in jobs if j["Comment"] == "rule_pretrain"]

    assert len(pretrain) == 1, [j["Comment"] for j in jobs]
    assert pretrain[0]["Partition"] == "gpu"
    assert "gres/gpu=1" in pretrain[0]["AllocTRES"]
    assert {j["Partition"] for j in jobs if j is not pretrain[0]} == {"debug"}
    # CI's GPU is a counted resource with no device behind it: training fell back to CPU.
    log = (slurm_run[0] / "logs/pretrain/demo.log").read_text()
    assert "training on the CPU instead" in log
    # One process, the single task of the job step's own srun: no second rank, no rank log.
    assert "rank 0: srun task 0 of 1 (SLURM job" in log
    assert not list((slurm_run[0] / "logs/pretrain").glob("demo.rank*.log"))


def test_slurm_curation_is_byte_identical_to_local_run(slurm_run, local_run):
    """Every curation output and shard file equals the local run's, byte for byte."""
    for sub in ("curate", "shards"):
        local = digest_tree(local_run[0] / "results" / sub)
        remote = digest_tree(slurm_run[0] / "results" / sub)
        assert local, f"the local run wrote nothing under results/{sub}"
        assert remote == local


def test_slurm_metrics_equal_local_run(slurm_run, local_run):
    """Every evaluation's metrics.json holds the same values as in the local run."""
    local = sorted((local_run[0] / "results/eval").rglob("metrics.json"))
    remote = sorted((slurm_run[0] / "results/eval").rglob("metrics.json"))
    relative = [p.relative_to(local_run[0]) for p in local]

    assert local
    assert [p.relative_to(slurm_run[0]) for p in remote] == relative
    for rel in relative:
        assert json.loads((slurm_run[0] / rel).read_text()) == json.loads(
            (local_run[0] / rel).read_text()
        ), rel


# DDP over two SLURM tasks of one node: what profiles/slurm/config.yaml's multi-GPU block does,
# on CPUs (gloo) since the CI node has one fake GPU. Same shards as slurm_run, another run name.
DDP_CONFIG = """\
pretrain:
  run: ddp2
  overrides:
    trainer.accelerator: cpu
    trainer.strategy: ddp
    trainer.devices: 2
    data.batch_size: 8
    data.num_workers: 0
"""
DDP_RESOURCES = (
    "pretrain:slurm_partition=debug",
    "pretrain:gpu=0",
    "pretrain:mpi=srun",
    "pretrain:tasks_per_node=2",
    "pretrain:cpus_per_task=1",
)


def sacct_steps(job_id: str) -> list[dict[str, str]]:
    """The steps of one SLURM job (batch, srun steps) with their task counts, from sacct."""
    fields = ("JobID", "NTasks", "State")
    out = subprocess.run(
        ["bash", str(EXEC), "sacct", "-n", "-P", "-j", job_id, "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]


@pytest.fixture(scope="module")
def ddp_slurm_run(slurm_run) -> tuple[Path, subprocess.CompletedProcess]:
    """The pretrain rule alone, after slurm_run, as one job of 2 tasks (mpi: srun)."""
    workdir = slurm_run[0]
    (workdir / "ddp.yaml").write_text(DDP_CONFIG)
    proc = slurm_snakemake(
        workdir,
        "results/train/ddp2/metrics.csv",
        "--set-resources",
        *DDP_RESOURCES,
        configfiles=("ddp.yaml",),
    )
    return workdir, proc


def test_slurm_pretrain_on_two_tasks_runs_both_ranks_under_srun(ddp_slurm_run):
    """With mpi: srun and tasks_per_node 2 the rule's own srun starts two ranks in the job,
    which train DDP together to the last step; each rank writes its own log."""
    workdir, proc = ddp_slurm_run
    (job,) = sacct_jobs(proc)
    steps = sacct_steps(job["JobID"])
    srun_steps = [s for s in steps if s["JobID"].startswith(f"{job['JobID']}.")]
    srun_steps = [s for s in srun_steps if s["JobID"].split(".")[1].isdigit()]

    assert job["Comment"] == "rule_pretrain"
    assert job["State"] == "COMPLETED", job
    assert [(s["NTasks"], s["State"]) for s in srun_steps] == [("2", "COMPLETED")], steps
    logs = workdir / "logs/pretrain"
    rank0, rank1 = (logs / "ddp2.log").read_text(), (logs / "ddp2.rank1.log").read_text()
    assert f"rank 0: srun task 0 of 2 (SLURM job {job['JobID']}" in rank0
    assert f"rank 1: srun task 1 of 2 (SLURM job {job['JobID']}" in rank1
    assert "srun task 1" not in rank0
    metrics = pd.read_csv(workdir / "results/train/ddp2/metrics.csv")
    assert metrics["step"].tolist() == list(range(1, 7))
    assert (
        json.loads((workdir / "results/train/ddp2/pretrain.json").read_text())["extra"][
            "final_step"
        ]
        == 6
    )


def _curation_targets(slides: dict[str, Path | str]) -> list[str]:
    return [f"results/shards/{sid}.zarr/zarr.json" for sid in slides]


def test_slurm_broken_slide_fails_alone_and_rerun_runs_only_it(config_dir, tmp_path):
    """A broken slide's job fails with its log named, the other slide finishes; after fixing
    the manifest a rerun submits only the fixed slide's jobs."""
    not_a_slide = tmp_path / "notes.svs"
    not_a_slide.write_text("this is a text file, not a slide\n")
    slides = {"OS-1-detail": TEST_SLIDES["OS-1-detail"], "broken": not_a_slide}
    workdir = run_folder(tmp_path / "run", slides, config_dir)

    first = slurm_snakemake(workdir, *_curation_targets(slides), check=False)
    output = first.stdout + first.stderr
    states = {j["State"] for j in sacct_jobs(first)}
    good = workdir / "results/shards/OS-1-detail.zarr"

    assert first.returncode != 0
    assert "logs/segment_tissue/broken.log" in output, "the failed job's log is not named"
    assert (good / "zarr.json").is_file()
    assert not (workdir / "results/shards/broken.zarr").exists()
    assert states == {"COMPLETED", "FAILED"}, states
    logs = failed_logs(workdir, first)
    assert logs, "no failed job's log file was reported"
    assert any("broken" in p.read_text() for p in logs), logs

    before = {p: p.stat().st_mtime_ns for p in good.rglob("*") if p.is_file()}
    run_folder(workdir, {**slides, "broken": TEST_SLIDES["OS-1-detail"]}, config_dir)
    second = slurm_snakemake(workdir, *_curation_targets(slides))
    rerun = sacct_jobs(second)

    assert (workdir / "results/shards/broken.zarr/zarr.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in good.rglob("*") if p.is_file()} == before
    assert len(rerun) == (1 if curation_is_grouped(config_dir) else len(CURATE_RULES)), rerun
    assert {j["State"] for j in rerun} == {"COMPLETED"}
    assert all("OS-1-detail" not in j["Comment"] for j in rerun), rerun
