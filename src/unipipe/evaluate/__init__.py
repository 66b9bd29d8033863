"""Evaluation on frozen features: metrics, protocols (registered on import), tasks, stages.

fewshot and retrieval register their ROI protocols when this package loads, so that
``PROTOCOLS`` is whole wherever it is read. The other names load their modules on first
use: the workflow reads the registries when it parses the Snakefile, and the slide and
segmentation stacks need not come with every Snakemake start and cluster job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unipipe.evaluate import fewshot, retrieval  # noqa: F401  (register their protocols)
from unipipe.evaluate.metrics import METRICS, compute_metrics
from unipipe.evaluate.protocols import PROTOCOLS, get_protocol
from unipipe.lazy import lazy_getattr

if TYPE_CHECKING:
    from unipipe.evaluate.run import run_evaluate
    from unipipe.evaluate.segmentation import run_segmentation_probe
    from unipipe.evaluate.slides import SLIDE_PROTOCOLS, run_evaluate_slides
    from unipipe.evaluate.tasks import Task, load_task_registry, task_status

_HOMES = {
    "run_evaluate": "unipipe.evaluate.run",
    "run_segmentation_probe": "unipipe.evaluate.segmentation",
    "SLIDE_PROTOCOLS": "unipipe.evaluate.slides",
    "run_evaluate_slides": "unipipe.evaluate.slides",
    "Task": "unipipe.evaluate.tasks",
    "load_task_registry": "unipipe.evaluate.tasks",
    "task_status": "unipipe.evaluate.tasks",
}

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "SLIDE_PROTOCOLS",
    "Task",
    "compute_metrics",
    "get_protocol",
    "load_task_registry",
    "run_evaluate",
    "run_evaluate_slides",
    "run_segmentation_probe",
    "task_status",
]

__getattr__ = lazy_getattr(__name__, _HOMES)
