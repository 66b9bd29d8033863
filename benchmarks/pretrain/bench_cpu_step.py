"""CPU step time of one DINOv2 iteration: ViT-S/16, batch 4, 2x224 + 8x96 crops, fp32.

Reference (the DINOv2 code base on these 2-core machines): ~2.1 s per step. Everything
else is UNI's recipe (65,536 prototypes, iBOT on masked tokens, KoLeo, Sinkhorn-Knopp,
drop path 0.3 on batch subsets).

Usage:
    .venv/bin/python benchmarks/pretrain/bench_cpu_step.py [--threads 1] [--profile] [--compile]
    .venv/bin/python benchmarks/pretrain/bench_cpu_step.py --compare-rev REV --rounds 4

``--compare-rev`` times ``src/`` of a git revision and the working tree in fresh processes,
alternating round by round, so that both see the same load on a shared machine. Each step
reports wall seconds and the process's CPU seconds (with one thread the CPU seconds barely
move with the load; the wall time does).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import torch
from common import ROOT, UNI_YAML, multicrop_batch, training_step_fn

# Self time of these ops is "matrix multiplication" in the profile summary.
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution")


def _module(arch: str, batch_size: int, compile_trunk: bool = False, yaml: Path = UNI_YAML):
    from unipipe.ssl.config import PretrainConfig
    from unipipe.ssl.module import DINOv2Module

    cfg = PretrainConfig.from_yaml(
        yaml,
        {
            "model.arch": arch,
            "data.batch_size": batch_size,
            "augment.photometric_on": "worker",
            "trainer.precision": "32-true",  # an fp32 run: its optimiser choice, not bf16's
            "trainer.compile": compile_trunk,
        },
    )
    torch.manual_seed(0)
    return multicrop_batch(cfg, batch_size), DINOv2Module(cfg, global_batch=batch_size).train()


def _matmul_share(step) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {
        "matmul_share": round(matmul / total, 3),
        "top_ops_ms": {e.key: round(e.self_cpu_time_total / 1e3, 1) for e in top},
    }


def measure(args: argparse.Namespace) -> dict:
    """Time ``args.repeats`` steps after one warm-up step in this process."""
    torch.set_num_threads(args.threads)
    from unipipe import runtime

    # As run_pretrain does; revisions from before it existed run without it.
    keep = getattr(runtime, "keep_freed_host_memory", None)
    kept = bool(keep and keep())
    batch, module = _module(args.arch, args.batch, args.compile, Path(args.yaml))
    step = training_step_fn(module, batch, device="cpu", dtype=None)
    for _ in range(3 if args.compile else 1):  # inductor builds its graphs in the first steps
        step()
    walls, cpus = [], []
    for _ in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    out = {
        "benchmark": "cpu_step",
        "arch": args.arch,
        "batch": args.batch,
        "crops": "2x224+8x96",
        "precision": "fp32",
        "compiled": args.compile,
        "threads": args.threads,
        "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3),
        "times_s": [round(t, 3) for t in walls],
        "cpu_median_s": round(statistics.median(cpus), 3),
        "cpu_min_s": round(min(cpus), 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "host_memory_kept": kept,
        "reference_dinov2_s": 2.1,
    }
    if args.profile:
        out.update(_matmul_share(step))
    return out


def _export_tree(rev: str, dest: Path) -> Path:
    """``src/`` and ``config/`` of git revision ``rev`` unpacked under ``dest``.

    The recipe comes from the same revision: a newer config may carry keys an older ``src``
    refuses.
    """
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src", "config"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _run_worker(tree: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--worker", "--arch", args.arch, "--batch", str(args.batch)]
    cmd += ["--yaml", str(tree / UNI_YAML.relative_to(ROOT))]
    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    cmd += ["--compile"] if args.compile else []
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict:
    """Alternate fresh processes of revision ``args.compare_rev`` and the working tree."""
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"before": _export_tree(args.compare_rev, Path(tmp)), "after": ROOT}
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        loads = [os.getloadavg()[0]]
        for _ in range(args.rounds):
            for name, tree in variants.items():
                runs[name].append(_run_worker(tree, args))
                loads.append(os.getloadavg()[0])
    summary: dict = {"compare_rev": args.compare_rev, "threads": args.threads}
    for name, results in runs.items():
        walls = [t for r in results for t in r["times_s"]]
        cpus = [r["cpu_median_s"] for r in results]
        summary[name] = {
            "median_s": round(statistics.median(walls), 3),
            "min_s": round(min(walls), 3),
            "cpu_median_s": round(statistics.median(cpus), 3),
            "cpu_min_s": round(min(r["cpu_min_s"] for r in results), 3),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
        }
    b, a = summary["before"], summary["after"]
    summary["ratio_after_before"] = {
        "median_s": round(a["median_s"] / b["median_s"], 3),
        "min_s": round(a["min_s"] / b["min_s"], 3),
        "cpu_median_s": round(a["cpu_median_s"] / b["cpu_median_s"], 3),
    }
    summary["load_1min"] = [round(x, 2) for x in loads]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="add the matmul share of a step")
    parser.add_argument("--compile", action="store_true", help="trainer.compile (inductor)")
    parser.add_argument("--compare-rev", help="git revision to time against the working tree")
    parser.add_argument("--yaml", default=str(UNI_YAML), help="the recipe (UNI's by default)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --compare-rev")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    result = compare(args) if args.compare_rev else measure(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
