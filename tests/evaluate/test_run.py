"""Tests of unipipe.evaluate.run.run_evaluate end to end on the real TCGA tile features."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate.protocols import PROTOCOLS
from unipipe.evaluate.run import run_evaluate

FAST = {"bootstrap": {"n_resamples": 200}}
DEMO_TASK = {
    "id": "tcga_luadlusc_demo",
    "split": {"source": "folders", "train": "train", "test": "test"},
    "metrics": ["balanced_accuracy", "weighted_f1", "auroc"],
}


def _run(h5: Path, out: Path, protocol: str, seed: int = 0, params: dict | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    run_evaluate(
        h5,
        task=DEMO_TASK,
        protocol=protocol,
        params=params or FAST,
        seed=seed,
        metrics_json=out / "metrics.json",
        predictions_parquet=out / "pred.parquet",
        sidecar=out / "sidecar.json",
    )
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_run_evaluate_every_protocol_writes_outputs(
    protocol: str, demo_h5: Path, tmp_path: Path
) -> None:
    """metrics.json has the contract keys with CIs bracketing values; predictions has 60 rows."""
    m = _run(demo_h5, tmp_path, protocol)
    for key in ("task", "protocol", "encoder", "n_train", "n_test", "seed"):
        assert key in m
    assert (m["n_train"], m["n_test"], m["encoder"]) == (130, 60, "random_tiny")
    for name in ("balanced_accuracy", "weighted_f1", "auroc"):
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"]
    table = pq.read_table(tmp_path / "pred.parquet")
    assert table.num_rows == 60
    assert {"row", "path", "label", "pred", "prob_LUAD", "prob_LUSC"} <= set(table.column_names)


def test_run_evaluate_same_seed_same_bytes(demo_h5: Path, tmp_path: Path) -> None:
    """Equal seeds give byte-identical metrics.json and predictions; another seed moves CIs."""
    a = _run(demo_h5, tmp_path / "a", "linear", seed=1)
    _run(demo_h5, tmp_path / "b", "linear", seed=1)
    c = _run(demo_h5, tmp_path / "c", "linear", seed=2)
    for name in ("metrics.json", "pred.parquet", "sidecar.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["balanced_accuracy"] == c["balanced_accuracy"]
    assert a["balanced_accuracy_ci_low"] != c["balanced_accuracy_ci_low"]


def test_run_evaluate_knn_reports_one_nn(demo_h5: Path, tmp_path: Path) -> None:
    """The knn protocol reports k=20 as primary and 1-NN balanced accuracy in extra."""
    m = _run(demo_h5, tmp_path, "knn")
    assert m["extra"]["k"] == 20
    assert 0.0 <= m["extra"]["balanced_accuracy_at_k"]["1"] <= 1.0


def test_run_evaluate_rejects_unknown_param(demo_h5: Path, tmp_path: Path) -> None:
    """A typo in the evaluate.linear section raises ConfigError naming the key."""
    with pytest.raises(ConfigError, match="evaluate.linear"):
        _run(demo_h5, tmp_path, "linear", params={"linear": {"max_iters": 10}})


def test_registry_demo_task_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/tasks.yaml's demo entry (as_spec) drives run_embed_rois then run_evaluate."""
    from unipipe.embed.rois import run_embed_rois
    from unipipe.evaluate.tasks import load_task_registry

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # the demo path is relative to the repository root
    task = next(t for t in load_task_registry("config/tasks.yaml", "data")
                if t.id == "tcga_luadlusc_demo").as_spec()  # fmt: skip
    spec = {"kind": "random", "arch": "vit_small_patch16_224", "seed": 1,
            "kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}}  # fmt: skip
    h5 = tmp_path / "f.h5"
    run_embed_rois(
        task,
        encoder_name="rand",
        encoder_spec=spec,
        out_h5=h5,
        sidecar=tmp_path / "e.json",
        batch_size=64,
        num_workers=0,
        img_size=224,
    )
    out = tmp_path / "eval"
    run_evaluate(h5, task=task, protocol="simpleshot", params=FAST, seed=0,
                 metrics_json=out / "m.json", predictions_parquet=out / "p.parquet",
                 sidecar=out / "s.json")  # fmt: skip
    m = json.loads((out / "m.json").read_text())
    assert (m["task"], m["n_train"], m["n_test"], m["img_size"]) == ("tcga_luadlusc_demo", 130,
                                                                    60, 224)  # fmt: skip
    assert m["balanced_accuracy_ci_low"] <= m["balanced_accuracy"]
