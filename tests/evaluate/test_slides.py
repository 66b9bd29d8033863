"""Tests of unipipe.evaluate.slides.run_evaluate_slides on bags of real tile embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate.features import read_roi_features
from unipipe.evaluate.slides import read_slide_manifest, run_evaluate_slides

TASK = {"id": "demo_slides", "classes": ["LUAD", "LUSC"],
        "split": {"train": "train", "test": "test"},
        "metrics": ["balanced_accuracy", "weighted_f1", "auroc"]}  # fmt: skip
PARAMS = {"abmil": {"max_epochs": 15, "patience": 5, "min_epochs": 5, "lr": 1e-3},
          "bootstrap": {"n_resamples": 100}, "slides": {"val_fraction": 0.2}}  # fmt: skip


def _write_slides(h5: Path, out: Path) -> Path:
    """One pseudo-slide per 5 consecutive tiles of a class folder; both bag schemas used."""
    feats = read_roi_features(h5)
    rows = ["slide_id,label,split,features_h5,cohort"]
    for r in range(0, len(feats.paths), 5):
        # Rows are sorted by path and each split/class folder holds a multiple of 5 tiles,
        # so a chunk never mixes classes or splits.
        members = list(range(r, r + 5))
        assert len({(feats.labels[i], feats.split[i]) for i in members}) == 1
        name = f"s{r:03d}"
        with h5py.File(out / f"{name}.h5", "w") as f:
            key = "feats" if r % 2 else "features"
            f[key] = feats.features[members]
            f["coords"] = np.zeros((len(members), 2), np.int64)
        cohort = "tcga" if (r // 5) % 2 else "cptac"
        rows.append(f"{name},{feats.label_names[feats.labels[r]]},{feats.split[r]},{name}.h5,"
                    f"{cohort}")  # fmt: skip
    (out / "slides.csv").write_text("\n".join(rows) + "\n")
    return out / "slides.csv"


def test_run_evaluate_slides_learns_and_writes(demo_h5: Path, tmp_path: Path) -> None:
    """ABMIL on 26 train / 12 test pseudo-slides beats chance; outputs follow metrics.json."""
    manifest = _write_slides(demo_h5, tmp_path)
    run_evaluate_slides(manifest, task=TASK, params=PARAMS, seed=0, encoder_name="tiny",
                        metrics_json=tmp_path / "m.json", predictions_parquet=tmp_path / "p.pq",
                        sidecar=tmp_path / "s.json", heatmaps_parquet=tmp_path / "h.pq")  # fmt: skip
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["protocol"], m["encoder"], m["n_test"]) == ("abmil", "tiny", 12)
    attention = pq.read_table(tmp_path / "h.pq").to_pandas().groupby("slide_id")["score"].sum()
    np.testing.assert_allclose(attention.to_numpy(), 1.0, atol=1e-5)
    assert m["n_train"] + m["n_val"] == 26
    assert m["balanced_accuracy_ci_low"] <= m["balanced_accuracy"] <= m["balanced_accuracy_ci_high"]
    assert m["auroc"] > 0.6
    assert pq.read_table(tmp_path / "p.pq").num_rows == 12
    cohorts = m["by_cohort"]
    assert sorted(cohorts) == ["cptac", "tcga"]
    assert cohorts["tcga"]["n_test"] + cohorts["cptac"]["n_test"] == 12
    assert "balanced_accuracy_ci_low" in cohorts["tcga"]


def test_run_evaluate_slides_mi_simpleshot(demo_h5: Path, tmp_path: Path) -> None:
    """MI-SimpleShot (top-5 patches per prototype) on the same pseudo-slides beats chance."""
    manifest = _write_slides(demo_h5, tmp_path)
    run_evaluate_slides(manifest, task=TASK, params={"bootstrap": {"n_resamples": 50}}, seed=0,
                        metrics_json=tmp_path / "m.json", predictions_parquet=tmp_path / "p.pq",
                        sidecar=tmp_path / "s.json", protocol="mi_simpleshot",
                        heatmaps_parquet=tmp_path / "h.pq")  # fmt: skip
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["protocol"] == "mi_simpleshot"
    heat = pq.read_table(tmp_path / "h.pq").to_pandas()
    assert len(heat) == 12 * 5  # every patch of the 12 test slides
    assert heat.groupby("slide_id").size().eq(5).all()
    assert (heat["x"] == 0).all()
    assert m["extra"]["top_k"] == 5
    assert m["auroc"] > 0.6


def test_read_slide_manifest_requires_columns(tmp_path: Path) -> None:
    """A manifest without features_h5 raises ConfigError listing the needed columns."""
    (tmp_path / "slides.csv").write_text("slide_id,label,split\na,LUAD,train\n")
    with pytest.raises(ConfigError, match="features_h5"):
        read_slide_manifest(tmp_path / "slides.csv")


def test_hold_out_moves_whole_cases() -> None:
    """The validation hold-out never splits a case: its slides all move or all stay."""
    from unipipe.evaluate.slides import _hold_out

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    cases = np.array(["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4"], dtype=object)
    for seed in range(10):
        val = _hold_out(labels, 0.5, seed, cases)
        for case in set(cases):
            assert len(set(val[cases == case])) == 1
        assert val[labels == 0].sum() == 2 and val[labels == 1].sum() == 2
