"""Slide-task manifests the evaluation cannot score are refused at start-up (dry runs)."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import yaml

from tests.conftest import RESOURCES, SLIDES
from tests.workflow.dag import make_workdir, snakemake

pytestmark = [pytest.mark.slow]

BAG = RESOURCES / "features" / "TCGA-AD-6964-01Z-00-DX1.h5"
ROWS = [("a0", "A", "train"), ("a1", "A", "val"), ("a2", "A", "test"),
        ("b0", "B", "train"), ("b1", "B", "val"), ("b2", "B", "test")]  # fmt: skip


def _setup(tmp_path: Path, rows: list[tuple[str, str, str]], tasks: list[str]) -> tuple:
    """A bag task cut from the real bag, a task whose adapter does not exist, and a config."""
    folder = tmp_path / "bags"
    folder.mkdir()
    with h5py.File(BAG) as src:
        feats = src["feats"][:]
    lines = ["slide_id,label,split,features_h5"]
    for i, (slide_id, label, split) in enumerate(rows):
        with h5py.File(folder / f"{slide_id}.h5", "w") as f:
            f["features"] = feats[50 * i : 50 * (i + 1)]
        lines.append(f"{slide_id},{label},{split},{slide_id}.h5")
    (folder / "slides.csv").write_text("\n".join(lines) + "\n")
    entry = {"level": "slide", "adapter": "slide_bags", "path": str(folder),
             "classes": ["A", "B"], "protocols": ["mi_simpleshot"],
             "metrics": ["balanced_accuracy"]}  # fmt: skip
    registry = {"tasks": {"bag_task": entry, "odd_adapter": {**entry, "adapter": "slide_bag"}}}
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(registry))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"tasks": str(tmp_path / "tasks.yaml"),
                                      "evaluate": {"tasks": tasks}}))  # fmt: skip
    workdir = make_workdir(
        tmp_path / "run", {"CMU-1-Small-Region": SLIDES / "CMU-1-Small-Region.svs"}
    )
    return workdir, config, folder / "slides.csv"


def test_label_typo_stops_the_run_at_start(tmp_path: Path) -> None:
    """A label outside the task's classes stops the dry run, naming the CSV, label and lines."""
    rows = [(s, "b" if s == "b2" else label, split) for s, label, split in ROWS]
    workdir, config, csv = _setup(tmp_path, rows, ["bag_task"])
    proc = snakemake(workdir, "-n", configfiles=(config,), check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert (
        f"{csv}: label(s) not among the task's classes ['A', 'B']: 'b' (1 slide: line(s) 7)" in text
    )


def test_skipped_task_target_says_why(tmp_path: Path) -> None:
    """Asking for a skipped task's metrics.json names the task and the reason, not a KeyError."""
    workdir, config, _ = _setup(tmp_path, ROWS, ["bag_task", "odd_adapter"])
    target = "results/eval/random_init/odd_adapter/mi_simpleshot/metrics.json"
    proc = snakemake(workdir, "-n", target, configfiles=(config,), check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "KeyError" not in text
    assert "task 'odd_adapter' is skipped, so it has no outputs" in text
    assert "adapter 'slide_bag' (slide level) is not implemented yet" in text
