"""One rank of the divergence test: ``python finite_worker.py INIT_FILE RANK OUT_TXT``.

Two ranks join a gloo group through a shared file (no socket); rank 1 has a NaN iBOT
term, rank 0 finite losses. Each writes what ``check_finite_losses`` did: the error
message, or "went on". A rank that went on alone would hang in the next collective.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from unipipe.ssl.module import TrainingDivergedError, check_finite_losses

if __name__ == "__main__":
    init_file, rank, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=30),
    )
    ibot = float("nan") if rank == 1 else 0.5
    losses = {"dino": torch.tensor(1.0), "ibot": torch.tensor(ibot), "total": torch.tensor(ibot)}
    try:
        check_finite_losses(losses, step=7)
        result = "went on"
    except TrainingDivergedError as err:
        result = str(err)
    out.write_text(result)
    dist.destroy_process_group()
