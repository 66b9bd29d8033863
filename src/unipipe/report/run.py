"""Stage entry point: the final report (summary.csv + a static index.html with its images)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from unipipe.evaluate.tasks import Task, load_task_registry, task_status
from unipipe.provenance import atomic_path, write_sidecar
from unipipe.report.page import SlideAssets, render_page
from unipipe.report.plots import plot_fewshot_curves, plot_training_curve
from unipipe.report.summary import summary_table

logger = logging.getLogger(__name__)

__all__ = ["CURATE_IMAGES", "run_report"]

# (caption, file name in results/curate/{slide}/), in display order.
CURATE_IMAGES = (
    ("tissue", "tissue_preview.jpg"),
    ("artefacts", "artefacts_preview.jpg"),
    ("selected patches", "mosaic.jpg"),
)


def _copy_slide_assets(curate_dir: Path, out_dir: Path) -> SlideAssets:
    """Copy a slide's preview images under out_dir/assets/curate/{slide}/."""
    slide_id = curate_dir.name
    images = []
    for caption, name in CURATE_IMAGES:
        src = curate_dir / name
        if not src.is_file():
            logger.warning("report: %s has no %s", curate_dir, name)
            images.append((caption, None))
            continue
        rel = Path("assets") / "curate" / slide_id / name
        with atomic_path(out_dir / rel) as tmp:
            shutil.copyfile(src, tmp)
        images.append((caption, rel.as_posix()))
    verdict = None
    qc = curate_dir / "qc.json"
    if qc.is_file():
        verdict = json.loads(qc.read_text()).get("verdict")
    return SlideAssets(slide_id=slide_id, images=tuple(images), verdict=verdict)


def _fewshot_figures(
    metrics_jsons: Sequence[str | os.PathLike[str]], out: Path
) -> list[tuple[str, str]]:
    """Draw one few-shot figure per task; returns (task, relative png path) pairs."""
    by_task: dict[str, list[dict]] = {}
    for path in metrics_jsons:
        record = json.loads(Path(path).read_text())
        if record.get("protocol") == "fewshot" and "curve" in record.get("extra", {}):
            by_task.setdefault(str(record.get("task")), []).append(record)
    figures = []
    for task, records in sorted(by_task.items()):
        rel = f"assets/fewshot_{task}.png"
        plot_fewshot_curves(records, out / rel)
        figures.append((task, rel))
    return figures


def run_report(
    *,
    metrics_jsons: Sequence[str | os.PathLike[str]],
    curate_dirs: Sequence[str | os.PathLike[str]],
    train_metrics_csv: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    tasks_yaml: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> None:
    """Write out_dir/summary.csv, out_dir/index.html, out_dir/assets/ and out_dir/sidecar.json.

    Args:
        metrics_jsons: metrics.json files of ``run_evaluate`` (any encoders, tasks, protocols).
        curate_dirs: results/curate/{slide}/ folders holding tissue_preview.jpg,
            artefacts_preview.jpg and mosaic.jpg (and qc.json); missing images are noted.
        train_metrics_csv: the pretraining metrics.csv (step + loss columns) or None.
        out_dir: the report folder; every link of index.html points inside it.
        tasks_yaml: config/tasks.yaml, for UNI's figures and the list of skipped tasks
            (None: no UNI column, no skipped list).
        data_root: ``evaluate.data_root``, to resolve task paths for the skipped list.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks: list[Task] = load_task_registry(tasks_yaml, data_root or "data") if tasks_yaml else []
    logger.info("report: %s metrics files, %s slides", len(metrics_jsons), len(curate_dirs))

    slides = [_copy_slide_assets(Path(d), out) for d in curate_dirs]
    loss_png = None
    if train_metrics_csv is not None:
        loss_png = "assets/train_loss.png"
        plot_training_curve(train_metrics_csv, out / loss_png)

    fewshot = _fewshot_figures(metrics_jsons, out)
    summary = summary_table(metrics_jsons, tasks)
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    skipped = [(t.id, reason) for t in tasks for status, reason in [task_status(t)]
               if status == "skipped"]  # fmt: skip
    page = render_page(slides=slides, loss_png=loss_png, summary=summary, skipped=skipped,
                       fewshot=fewshot)  # fmt: skip
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(page)

    inputs = [*metrics_jsons, *([train_metrics_csv] if train_metrics_csv else [])]
    inputs += [
        Path(d) / n for d in curate_dirs for _, n in CURATE_IMAGES if (Path(d) / n).is_file()
    ]
    write_sidecar(out / "sidecar.json", stage="report", params={
        "tasks_yaml": tasks_yaml, "data_root": data_root, "curate_dirs": list(curate_dirs)},
        inputs=inputs, extra={"n_rows": len(summary), "n_skipped": len(skipped)})  # fmt: skip
