"""One rank of the centering tests: ``python centering_worker.py INIT_FILE RANK OUT_PT``.

Two ranks join a gloo group through a shared file (no socket) and run SoftmaxCenter
updates and Sinkhorn-Knopp on their rows of each step's logits (``SPLITS``: rank 0's and
rank 1's row counts, zero on some steps). Each saves its centres and targets to OUT_PT;
the test compares them with one process on the concatenated rows.
"""

from __future__ import annotations

import datetime
import importlib.util
import sys
from pathlib import Path

import torch
import torch.distributed as dist

N_PROTOTYPES = 6
MOMENTUM = 0.9
TEMP = 0.5
SK_ITERS = 3
# Uneven on purpose: averaging per-rank means, or leaving a rank's count out, shows up.
SPLITS = [(5, 2), (0, 4), (3, 0), (0, 0), (1, 6)]


def step_logits(step: int) -> torch.Tensor:
    """All ranks' rows of one step, concatenated in rank order (rank 0 first)."""
    gen = torch.Generator().manual_seed(100 + step)
    n = sum(SPLITS[step])
    return torch.randn(n, N_PROTOTYPES, generator=gen) * 2.0 + torch.arange(N_PROTOTYPES)


def rank_rows(step: int, rank: int) -> torch.Tensor:
    start = sum(SPLITS[step][:rank])
    return step_logits(step)[start : start + SPLITS[step][rank]]


def load_centering():
    """unipipe/ssl/losses/centering.py, loaded alone.

    Importing it through its package runs unipipe.ssl's __init__, which imports Lightning and
    the whole training stack: ~10 s per process on a 2-core machine, for a module that
    needs torch only.
    """
    package = importlib.util.find_spec("unipipe")
    path = Path(package.submodule_search_locations[0]) / "ssl" / "losses" / "centering.py"
    spec = importlib.util.spec_from_file_location("centering_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    init_file, rank, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    centering = load_centering()
    SoftmaxCenter, sinkhorn_knopp = centering.SoftmaxCenter, centering.sinkhorn_knopp
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=30),
    )
    center = SoftmaxCenter(N_PROTOTYPES, momentum=MOMENTUM)
    centers, targets = [], []
    for step in range(len(SPLITS)):
        rows = rank_rows(step, rank)
        targets.append(sinkhorn_knopp(rows, TEMP, n_iters=SK_ITERS))
        center.update(rows)
        centers.append(center.center.clone())
    torch.save({"centers": centers, "targets": targets}, out)
    dist.destroy_process_group()
