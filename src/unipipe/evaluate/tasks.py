"""The task registry of config/tasks.yaml: UNI's evaluation tasks, their data and status."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "LEVELS",
    "SEGMENTATION_ADAPTERS",
    "SLIDE_ADAPTERS",
    "Task",
    "UniFigure",
    "load_task_registry",
    "task_status",
]

LEVELS = ("roi", "slide", "segmentation")


@dataclass(frozen=True, kw_only=True)
class UniFigure:
    """One published UNI result (arXiv 2308.15474) a run can be set against.

    Attributes:
        protocol: the protocol it was measured with (``linear``, ``knn``, ``abmil``, ...).
        metric: metric name as in metrics.json.
        value: the published point estimate.
        cohort: test cohort when a task has several (e.g. ``cptac``), else None.
        img_size: input side in px for resolution sweeps, else None (224).
    """

    protocol: str
    metric: str
    value: float
    cohort: str | None = None
    img_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class Task:
    """One evaluation task of config/tasks.yaml, paths resolved against ``data_root``.

    Attributes:
        id: task id (``results/eval/{encoder}/{task}/...``).
        level: ``roi``, ``slide`` or ``segmentation``.
        adapter: dataset adapter name (``unipipe.embed.datasets.DATASET_ADAPTERS`` for ROIs).
        path: where the data is expected (resolved).
        classes: class names in label order, or None when read from the data.
        n_classes: number of classes.
        split: split source, e.g. ``{source: folders, train: train, test: test}``.
        protocols: protocols to run.
        metrics: metric names (``unipipe.evaluate.metrics.METRICS``).
        uni: UNI's published figures for this task.
        description: what is classified, and from which data.
        img_sizes: resolution sweep sides in px (ROI tasks); default (224,).
    """

    id: str
    level: Literal["roi", "slide", "segmentation"]
    adapter: str
    path: str
    classes: tuple[str, ...] | None
    n_classes: int
    split: Mapping[str, Any]
    protocols: tuple[str, ...]
    metrics: tuple[str, ...]
    uni: tuple[UniFigure, ...] = ()
    description: str = ""
    img_sizes: tuple[int, ...] = (224,)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"tasks.{self.id}.level must be one of {LEVELS}, got {self.level!r}")
        if self.classes is not None and len(self.classes) != self.n_classes:
            raise ConfigError(
                f"tasks.{self.id}: {len(self.classes)} classes listed but n_classes is "
                f"{self.n_classes}"
            )
        if not self.protocols or not self.metrics:
            raise ConfigError(f"tasks.{self.id}: `protocols` and `metrics` must be non-empty")

    def as_spec(self) -> dict[str, Any]:
        """Plain dict for ``run_embed_rois(dataset_spec=...)`` / ``run_evaluate(task=...)``."""
        return {
            "id": self.id,
            "level": self.level,
            "adapter": self.adapter,
            "path": self.path,
            "classes": list(self.classes) if self.classes else None,
            "n_classes": self.n_classes,
            "split": dict(self.split),
            "splits": [v for k, v in self.split.items() if k != "source" and isinstance(v, str)],
            "protocols": list(self.protocols),
            "metrics": list(self.metrics),
        }


_TASK_KEYS = {
    "level", "adapter", "path", "classes", "n_classes", "split", "protocols", "metrics", "uni",
    "description", "img_sizes", "data",
}  # fmt: skip


def _task_from_entry(task_id: str, entry: Mapping[str, Any], data_root: str) -> Task:
    """Validate one YAML entry and resolve its ``{data_root}`` path template."""
    unknown = sorted(set(entry) - _TASK_KEYS)
    if unknown:
        raise ConfigError(
            f"tasks.{task_id}: unknown key(s) {unknown}; allowed {sorted(_TASK_KEYS)}"
        )
    for key in ("level", "adapter", "path", "protocols", "metrics"):
        if key not in entry:
            raise ConfigError(f"tasks.{task_id}: missing key {key!r} (config/tasks.yaml)")
    classes = entry.get("classes")
    n_classes = int(entry.get("n_classes") or (len(classes) if classes else 0))
    if n_classes < 2:
        raise ConfigError(f"tasks.{task_id}: give `classes` or `n_classes` >= 2")
    try:
        path = str(entry["path"]).format(data_root=data_root)
    except (KeyError, IndexError) as err:
        raise ConfigError(f"tasks.{task_id}.path: only {{data_root}} may be templated") from err
    uni = tuple(UniFigure(**fig) for fig in entry.get("uni") or ())
    return Task(
        id=task_id,
        level=entry["level"],
        adapter=entry["adapter"],
        path=path,
        classes=tuple(str(c) for c in classes) if classes else None,
        n_classes=n_classes,
        split=dict(entry.get("split") or {"source": "folders", "train": "train", "test": "test"}),
        protocols=tuple(entry["protocols"]),
        metrics=tuple(entry["metrics"]),
        uni=uni,
        description=str(entry.get("description", "")),
        img_sizes=tuple(int(s) for s in entry.get("img_sizes") or (224,)),
        extra={"data": entry.get("data", "")},
    )


def load_task_registry(
    path: str | os.PathLike[str], data_root: str | os.PathLike[str]
) -> list[Task]:
    """Read config/tasks.yaml (``tasks: {id: entry}``) into Tasks, in file order.

    Args:
        path: the YAML file.
        data_root: folder substituted for ``{data_root}`` in each task's ``path``
            (config key ``evaluate.data_root``); paths without it are used as written.
    """
    with open(path) as fh:
        doc = yaml.safe_load(fh) or {}
    entries = doc.get("tasks")
    if not isinstance(entries, Mapping):
        raise ConfigError(f"{os.fspath(path)}: expected a top-level `tasks:` mapping")
    root = os.fspath(data_root)
    return [_task_from_entry(str(tid), entry, root) for tid, entry in entries.items()]


# Slide-level adapters unipipe implements: slide_bags reads {path}/slides.csv (slide_id,
# label, split, optional cohort and case_id, and per row features_h5 or slide_path; see
# unipipe.evaluate.slide_manifest), evaluated by unipipe.evaluate.slides.run_evaluate_slides.
SLIDE_ADAPTERS = {"slide_bags": "slides.csv"}
# Segmentation adapters: segpath reads {path}/{split}/images/* and same-named masks/*
# (unipipe.evaluate.segmentation.run_segmentation_probe).
SEGMENTATION_ADAPTERS = {"segpath": "train/images"}


def _adapter_available(task: Task) -> bool:
    """Whether unipipe implements the task's dataset adapter."""
    from unipipe.embed.datasets import DATASET_ADAPTERS

    if task.level == "roi":
        return task.adapter in DATASET_ADAPTERS
    if task.level == "segmentation":
        return task.adapter in SEGMENTATION_ADAPTERS
    return task.adapter in SLIDE_ADAPTERS


def task_status(task: Task) -> tuple[Literal["ready", "skipped"], str]:
    """``("ready", "")`` or ``("skipped", reason)``; the reason names the path looked for.

    A task is ready when its data exists and its adapter is implemented.
    """
    where = Path(task.path)
    inside = {"slide": SLIDE_ADAPTERS, "segmentation": SEGMENTATION_ADAPTERS}.get(task.level, {})
    if task.adapter in inside:
        where = where / inside[task.adapter]
    if not where.exists():
        return "skipped", (
            f"data not found at {where} (set evaluate.data_root or place "
            f"{task.extra.get('data') or 'the dataset'} there)"
        )
    if not _adapter_available(task):
        return "skipped", (
            f"data present at {task.path} but adapter {task.adapter!r} ({task.level} level) "
            "is not implemented yet"
        )
    return "ready", ""
