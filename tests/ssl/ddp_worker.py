"""One rank of the 2-process DDP test: ``python ddp_worker.py INDEX OUT_DIR OVERRIDES_JSON``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from unipipe.ssl import PretrainConfig, run_pretrain

TINY_YAML = Path(__file__).parents[2] / "config" / "pretrain" / "tiny_cpu.yaml"

if __name__ == "__main__":
    index, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = PretrainConfig.from_yaml(TINY_YAML, json.loads(sys.argv[3]))
    run_pretrain(
        index,
        config=cfg,
        out_dir=out,
        encoder_safetensors=out / "encoder.safetensors",
        encoder_json=out / "encoder.json",
        metrics_csv=out / "metrics.csv",
        sidecar=out / "pretrain.json",
        seed=0,
    )
