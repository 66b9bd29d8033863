"""Tests of unipipe.evaluate.tasks on the real config/tasks.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate.metrics import METRICS
from unipipe.evaluate.tasks import load_task_registry, task_status

ROOT = Path(__file__).resolve().parents[2]
TASKS_YAML = ROOT / "config" / "tasks.yaml"


def test_registry_declares_every_uni_task(tmp_path: Path) -> None:
    """The demo plus UNI's 15 slide, 10 ROI and 8 SegPath tasks are declared."""
    tasks = load_task_registry(TASKS_YAML, tmp_path)
    levels = [t.level for t in tasks]
    assert (levels.count("slide"), levels.count("roi"), levels.count("segmentation")) == (15, 11, 8)
    ids = {t.id for t in tasks}
    assert {"tcga_luadlusc_demo", "crc100k", "panda", "ot108", "segpath_rbc", "bach"} <= ids
    assert len(ids) == len(tasks) == 34


def test_registry_metrics_are_registered(tmp_path: Path) -> None:
    """Every classification task's metrics exist in METRICS and each has a UNI figure."""
    for task in load_task_registry(TASKS_YAML, tmp_path):
        if task.level != "segmentation":
            assert set(task.metrics) <= set(METRICS), task.id
        if task.id != "tcga_luadlusc_demo":
            assert task.uni, task.id


def test_registry_uni_figures_match_uni_tasks_md(tmp_path: Path) -> None:
    """Spot checks of published figures against UNI_TASKS.md."""
    tasks = {t.id: t for t in load_task_registry(TASKS_YAML, tmp_path)}
    fig = {(f.protocol, f.metric, f.cohort, f.img_size): f.value for f in tasks["bach"].uni}
    assert fig[("linear", "balanced_accuracy", None, 448)] == 0.950
    assert {f.value for f in tasks["nsclc"].uni if f.cohort == "cptac"} == {0.889}
    assert {f.value for f in tasks["crc100k"].uni if f.metric == "mvacc_at_5"} == {0.931}


def test_task_status_demo_ready_missing_data_skipped(tmp_path: Path) -> None:
    """The bundled demo is ready (run from the repo root); a missing dataset says its path."""
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        tasks = {t.id: t for t in load_task_registry(TASKS_YAML, tmp_path / "data")}
        assert task_status(tasks["tcga_luadlusc_demo"]) == ("ready", "")
        status, reason = task_status(tasks["crc100k"])
    finally:
        os.chdir(cwd)
    assert status == "skipped"
    assert str(tmp_path / "data" / "crc100k") in reason


def test_task_status_data_without_adapter_is_skipped(tmp_path: Path) -> None:
    """Data present for an adapter unipipe lacks is skipped, naming the adapter."""
    import yaml

    (tmp_path / "x").mkdir()
    entry = {"level": "roi", "adapter": "openslide_regions", "path": "{data_root}/x",
             "classes": ["a", "b"], "protocols": ["knn"], "metrics": ["auroc"]}  # fmt: skip
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"tasks": {"x": entry}}))
    status, reason = task_status(load_task_registry(tmp_path / "t.yaml", tmp_path)[0])
    assert status == "skipped"
    assert "openslide_regions" in reason


def test_task_status_segpath_needs_images_folder(tmp_path: Path) -> None:
    """A SegPath task is ready once {path}/train/images exists, else names that folder."""
    task = next(t for t in load_task_registry(TASKS_YAML, tmp_path) if t.id == "segpath_rbc")
    status, reason = task_status(task)
    assert status == "skipped"
    assert str(tmp_path / "segpath" / "rbc" / "train" / "images") in reason
    (tmp_path / "segpath" / "rbc" / "train" / "images").mkdir(parents=True)
    assert task_status(task) == ("ready", "")


def test_task_status_slide_task_needs_manifest(tmp_path: Path) -> None:
    """A slide folder without slides.csv is skipped naming slides.csv; with it, ready."""
    (tmp_path / "camelyon16").mkdir()
    task = next(t for t in load_task_registry(TASKS_YAML, tmp_path) if t.id == "camelyon16")
    status, reason = task_status(task)
    assert status == "skipped"
    assert str(tmp_path / "camelyon16" / "slides.csv") in reason
    (tmp_path / "camelyon16" / "slides.csv").write_text("slide_id,label,split,features_h5\n")
    assert task_status(task) == ("ready", "")


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"level": "roi", "adapter": "x", "path": "p", "protocols": ["knn"]}, "metrics"),
        ({"level": "wsi", "adapter": "x", "path": "p", "classes": ["a", "b"],
          "protocols": ["knn"], "metrics": ["auroc"]}, "level"),
        ({"level": "roi", "adapter": "x", "path": "p", "classes": ["a"], "protocols": ["knn"],
          "metrics": ["auroc"]}, "n_classes"),
        ({"level": "roi", "adapter": "x", "path": "p", "classes": ["a", "b"], "protocol": [],
          "protocols": ["knn"], "metrics": ["auroc"]}, "unknown key"),
    ],
)  # fmt: skip
def test_load_task_registry_rejects_bad_entry(entry: dict, match: str, tmp_path: Path) -> None:
    """Malformed entries raise ConfigError naming the task and the key."""
    import yaml

    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": {"bad": entry}}))
    with pytest.raises(ConfigError, match=match):
        load_task_registry(path, tmp_path)
