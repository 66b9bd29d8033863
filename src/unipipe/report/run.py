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
from unipipe.report.compare import comparison_table
from unipipe.report.page import SlideAssets, render_page
from unipipe.report.plots import plot_fewshot_curves, plot_training_curve
from unipipe.report.summary import summary_table

logger = logging.getLogger(__name__)

__all__ = ["CURATE_IMAGES", "HEATMAP_DIR", "run_report"]

# (caption, file name in results/curate/{slide}/), in display order.
CURATE_IMAGES = (
    ("tissue", "tissue_preview.jpg"),
    ("artefacts", "artefacts_preview.jpg"),
    ("selected patches", "mosaic.jpg"),
)
# Folder beside an evaluation's metrics.json that holds its per-slide heatmap JPEGs.
HEATMAP_DIR = "heatmaps"


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


# Protocols whose metrics.json carries a few-shot curve (ROI episodes, slide ABMIL runs).
FEWSHOT_PROTOCOLS = ("fewshot", "abmil_fewshot")


def _fewshot_figures(
    metrics_jsons: Sequence[str | os.PathLike[str]], out: Path
) -> list[tuple[str, str]]:
    """Draw one few-shot figure per task; returns (task, relative png path) pairs."""
    by_task: dict[str, list[dict]] = {}
    for path in metrics_jsons:
        record = json.loads(Path(path).read_text())
        protocol = record.get("protocol")
        if protocol in FEWSHOT_PROTOCOLS and "curve" in record.get("extra", {}):
            key = str(record.get("task")) + ("" if protocol == "fewshot" else f"_{protocol}")
            by_task.setdefault(key, []).append(record)
    figures = []
    for task, records in sorted(by_task.items()):
        rel = f"assets/fewshot_{task}.png"
        plot_fewshot_curves(records, out / rel)
        figures.append((task, rel))
    return figures


def _copy_heatmaps(
    metrics_jsons: Sequence[str | os.PathLike[str]], out: Path
) -> tuple[list[tuple[str, list[tuple[str, str]]]], list[Path]]:
    """Copy each evaluation's heatmaps/*.jpg under out/assets/heatmaps/{encoder}/{task}/{protocol}/.

    Returns (title, [(slide id, relative path)]) groups in (task, protocol, encoder) order,
    and the source files (for the sidecar).
    """
    found = []
    for path in metrics_jsons:
        jpgs = sorted((Path(path).parent / HEATMAP_DIR).glob("*.jpg"))
        if jpgs:
            record = json.loads(Path(path).read_text())
            key = tuple(str(record.get(k)) for k in ("task", "protocol", "encoder"))
            found.append((key, jpgs))
    groups, sources = [], []
    for (task, protocol, encoder), jpgs in sorted(found):
        images = []
        for src in jpgs:
            rel = Path("assets") / HEATMAP_DIR / encoder / task / protocol / src.name
            with atomic_path(out / rel) as tmp:
                shutil.copyfile(src, tmp)
            images.append((src.stem, rel.as_posix()))
        groups.append((f"{task} / {protocol} / {encoder}", images))
        sources += jpgs
    return groups, sources


def run_report(
    *,
    metrics_jsons: Sequence[str | os.PathLike[str]],
    curate_dirs: Sequence[str | os.PathLike[str]],
    train_metrics_csv: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    tasks_yaml: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    compare_jsons: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Write out_dir/summary.csv, out_dir/index.html, out_dir/assets/ and out_dir/sidecar.json.

    Args:
        metrics_jsons: metrics.json files of ``run_evaluate`` (any encoders, tasks, protocols);
            JPEGs in a ``heatmaps/`` folder beside one are shown in the Heatmaps section.
        curate_dirs: results/curate/{slide}/ folders holding tissue_preview.jpg,
            artefacts_preview.jpg and mosaic.jpg (and qc.json); missing images are noted.
        train_metrics_csv: the pretraining metrics.csv (step + loss columns) or None.
        out_dir: the report folder; every link of index.html points inside it.
        tasks_yaml: config/tasks.yaml, for UNI's figures and the list of skipped tasks
            (None: no UNI column, no skipped list).
        data_root: ``evaluate.data_root``, to resolve task paths for the skipped list.
        compare_jsons: records of ``run_compare_encoders`` for the encoder comparison table.
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
    heatmaps, heatmap_sources = _copy_heatmaps(metrics_jsons, out)
    comparisons = comparison_table(compare_jsons)
    summary = summary_table(metrics_jsons, tasks)
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    skipped = [(t.id, reason) for t in tasks for status, reason in [task_status(t)]
               if status == "skipped"]  # fmt: skip
    page = render_page(slides=slides, loss_png=loss_png, summary=summary, skipped=skipped,
                       fewshot=fewshot, heatmaps=heatmaps, comparisons=comparisons)  # fmt: skip
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(page)

    inputs = [*metrics_jsons, *compare_jsons, *heatmap_sources,
              *([train_metrics_csv] if train_metrics_csv else [])]  # fmt: skip
    inputs += [
        Path(d) / n for d in curate_dirs for _, n in CURATE_IMAGES if (Path(d) / n).is_file()
    ]
    write_sidecar(out / "sidecar.json", stage="report", params={
        "tasks_yaml": tasks_yaml, "data_root": data_root, "curate_dirs": list(curate_dirs)},
        inputs=inputs, extra={"n_rows": len(summary), "n_skipped": len(skipped),
                             "n_comparisons": len(comparisons)})  # fmt: skip
