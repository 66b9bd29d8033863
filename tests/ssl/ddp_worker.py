"""One rank of the 2-process tests: ``python ddp_worker.py INDEX OUT_DIR OVERRIDES_JSON [STOP_AT]``.

With STOP_AT the run is first interrupted there (run_pretrain's set-up, a Trainer that stops
at that step), then run_pretrain resumes it from the checkpoint to the end.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L

from unipipe.ssl import PretrainConfig, run_pretrain
from unipipe.ssl.data import PretrainDataModule
from unipipe.ssl.module import DINOv2Module
from unipipe.ssl.train import build_trainer, claim_out_dir, run_fingerprint

TINY_YAML = Path(__file__).parents[2] / "config" / "pretrain" / "tiny_cpu.yaml"


def interrupted(index: Path, out: Path, cfg: PretrainConfig, stop_at: int) -> None:
    L.seed_everything(0, workers=True, verbose=False)
    out.mkdir(parents=True, exist_ok=True)
    claim_out_dir(out, run_fingerprint(cfg, 0, index))
    trainer = build_trainer(
        cfg, out_dir=out, max_steps=stop_at, metrics_path=out / "metrics_stream.csv"
    )
    global_batch = cfg.data.batch_size * trainer.world_size
    trainer.fit(
        DINOv2Module(cfg, global_batch=global_batch, seed=0),
        datamodule=PretrainDataModule(
            index, config=cfg, seed=0, total_steps=cfg.schedule.total_steps - cfg.highres.steps
        ),
    )


if __name__ == "__main__":
    index, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = PretrainConfig.from_yaml(TINY_YAML, json.loads(sys.argv[3]))
    if len(sys.argv) > 4:
        interrupted(index, out, cfg, int(sys.argv[4]))
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
    if cfg.trainer.compile:  # what dynamo captured, for the test to see it really compiled
        from torch._dynamo.utils import counters

        rank = os.environ.get("RANK", "0")
        graphs = {"unique_graphs": counters["stats"]["unique_graphs"]}
        (out / f"dynamo.rank{rank}.json").write_text(json.dumps(graphs))
