"""Evaluation on frozen features: metrics, protocols (registered on import), tasks, stages."""

from unipipe.evaluate import fewshot, retrieval  # noqa: F401  (register their protocols)
from unipipe.evaluate.metrics import METRICS, compute_metrics
from unipipe.evaluate.protocols import PROTOCOLS, get_protocol
from unipipe.evaluate.run import run_evaluate
from unipipe.evaluate.segmentation import run_segmentation_probe
from unipipe.evaluate.slides import SLIDE_PROTOCOLS, run_evaluate_slides
from unipipe.evaluate.tasks import Task, load_task_registry, task_status

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
