"""Tests of unipipe.report.run_report: summary.csv, index.html and that every link resolves."""

from __future__ import annotations

import json
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from unipipe.errors import ConfigError
from unipipe.report.run import run_report
from unipipe.report.summary import uni_figure

ROOT = Path(__file__).resolve().parents[2]
ZIP = ROOT / "resources" / "tiles" / "tcga_luadlusc.zip"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def _curate_dir(root: Path, slide: str, names: tuple[str, ...]) -> Path:
    """A results/curate/{slide} folder whose images are real TCGA JPEG tiles."""
    folder = root / "curate" / slide
    folder.mkdir(parents=True)
    with zipfile.ZipFile(ZIP) as zf:
        jpgs = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        for name, member in zip(names, jpgs, strict=False):
            (folder / name).write_bytes(zf.read(member))
    (folder / "qc.json").write_text(json.dumps({"verdict": "pass"}))
    return folder


def _metrics(root: Path, encoder: str, task: str, protocol: str, ba: float) -> Path:
    path = root / "eval" / encoder / task / protocol / "metrics.json"
    path.parent.mkdir(parents=True)
    record = {
        "encoder": encoder,
        "task": task,
        "protocol": protocol,
        "img_size": 224,
        "n_train": 130,
        "n_test": 60,
        "balanced_accuracy": ba,
        "balanced_accuracy_ci_low": ba - 0.05,
        "balanced_accuracy_ci_high": ba + 0.05,
        "auroc": None,
        "auroc_ci_low": None,
        "auroc_ci_high": None,
    }
    path.write_text(json.dumps(record))
    return path


def _train_csv(root: Path) -> Path:
    """metrics.csv as unipipe.ssl writes it, plus an extra column and blank cells."""
    rows = ["step,total,dino,ibot,koleo,lr,epoch"]
    rows += [f"{s},{5 - s / 10},{3 - s / 20},{2 - s / 20},0.1,{1e-4 * s},{'' if s % 2 else 0}"
             for s in range(20)]  # fmt: skip
    path = root / "metrics.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _fewshot_metrics(
    root: Path, encoder: str, task: str = "crc100k", protocol: str = "fewshot"
) -> Path:
    """A few-shot metrics.json with a 3-point curve."""
    path = root / "eval" / encoder / task / protocol / "metrics.json"
    path.parent.mkdir(parents=True)
    curve = {str(k): {"n_episodes": 10, "balanced_accuracy": {
        "mean": v, "std": 0.01, "q025": v - 0.02, "q975": v + 0.02}}
        for k, v in ((1, 0.4), (4, 0.6), (16, 0.8))}  # fmt: skip
    record = {"encoder": encoder, "task": task, "protocol": protocol, "img_size": 224,
              "n_train": 100, "n_test": 50, "balanced_accuracy": 0.8,
              "extra": {"curve": curve}}  # fmt: skip
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def report_inputs(tmp_path: Path) -> dict:
    """Two slides (one without a mosaic), three metrics files and a training csv."""
    full = ("tissue_preview.jpg", "artefacts_preview.jpg", "mosaic.jpg")
    return {
        "curate_dirs": [_curate_dir(tmp_path, "CMU-1", full),
                        _curate_dir(tmp_path, "OS-1", full[:2])],
        "metrics_jsons": [_metrics(tmp_path, "uni", "crc100k", "linear", 0.87),
                          _metrics(tmp_path, "random", "tcga_luadlusc_demo", "knn", 0.6),
                          _metrics(tmp_path, "random", "crc100k", "knn", 0.5),
                        _fewshot_metrics(tmp_path, "uni"), _fewshot_metrics(tmp_path, "random"),
                        _fewshot_metrics(tmp_path, "uni", "camelyon16", "abmil_fewshot")],
        "train_metrics_csv": _train_csv(tmp_path),
    }  # fmt: skip


def test_run_report_every_link_resolves(report_inputs: dict, tmp_path: Path) -> None:
    """Each href/src of index.html names a file inside out_dir; images were copied in."""
    out = tmp_path / "report"
    run_report(
        **report_inputs,
        out_dir=out,
        tasks_yaml=ROOT / "config" / "tasks.yaml",
        data_root=tmp_path / "data",
    )
    parser = _Links()
    parser.feed((out / "index.html").read_text())
    local = [link for link in parser.links if not link.startswith("#")]
    assert len(local) >= 2 * 6 + 2 + 1  # 5 images + loss + few-shot as link and src, csv
    assert "assets/fewshot_crc100k.png" in local
    assert "assets/fewshot_camelyon16_abmil_fewshot.png" in local  # the slide K-shot curve
    for link in local:
        assert (out / link).is_file(), link
        assert (out / link).resolve().is_relative_to(out.resolve())
    assert (out / "assets" / "curate" / "CMU-1" / "mosaic.jpg").is_file()
    text = (out / "index.html").read_text()
    assert "mosaic" in text
    assert "not produced" in text
    assert "crc100k" in text
    assert "data not found" in text


def test_run_report_summary_rows_and_uni_figures(report_inputs: dict, tmp_path: Path) -> None:
    """summary.csv has one sorted row per encoder x task x protocol with UNI's figure."""
    out = tmp_path / "report"
    run_report(**report_inputs, out_dir=out, tasks_yaml=ROOT / "config" / "tasks.yaml")
    table = pd.read_csv(out / "summary.csv")
    assert list(zip(table.encoder, table.task, table.protocol, strict=True)) == [
        ("random", "crc100k", "fewshot"), ("random", "crc100k", "knn"),
        ("random", "tcga_luadlusc_demo", "knn"), ("uni", "camelyon16", "abmil_fewshot"),
        ("uni", "crc100k", "fewshot"), ("uni", "crc100k", "linear")]  # fmt: skip
    table = table[~table.protocol.str.endswith("fewshot")].reset_index(drop=True)
    assert table.loc[2, "uni_balanced_accuracy"] == pytest.approx(0.874)
    assert table.loc[0, "uni_balanced_accuracy"] == pytest.approx(0.924)
    assert pd.isna(table.loc[1, "uni_balanced_accuracy"])
    assert table.loc[2, "balanced_accuracy_ci_low"] == pytest.approx(0.82)


def test_run_report_is_byte_identical_on_rerun(report_inputs: dict, tmp_path: Path) -> None:
    """Two reports of the same inputs have identical files (PNG without timestamps)."""
    for name in ("a", "b"):
        run_report(**report_inputs, out_dir=tmp_path / name)
    for rel in ("index.html", "summary.csv", "assets/train_loss.png", "assets/fewshot_crc100k.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_run_report_without_training_or_results(tmp_path: Path) -> None:
    """No inputs at all still gives a valid page saying what is missing."""
    run_report(metrics_jsons=[], curate_dirs=[], train_metrics_csv=None, out_dir=tmp_path / "r")
    text = (tmp_path / "r" / "index.html").read_text()
    assert "No training metrics given" in text
    assert "No evaluation results given" in text


def test_run_report_bad_training_csv_names_columns(tmp_path: Path) -> None:
    """A metrics.csv without a loss column raises ConfigError listing its columns."""
    csv = tmp_path / "m.csv"
    csv.write_text("step,acc\n0,1\n")
    with pytest.raises(ConfigError, match="acc"):
        run_report(metrics_jsons=[], curate_dirs=[], train_metrics_csv=csv, out_dir=tmp_path / "r")


def test_uni_figure_respects_img_size() -> None:
    """BACH's 448 px linear figure differs from its 224 px one; no task gives None."""
    from unipipe.evaluate.tasks import load_task_registry

    bach = next(
        t for t in load_task_registry(ROOT / "config" / "tasks.yaml", "d") if t.id == "bach"
    )
    assert uni_figure(bach, "linear", "balanced_accuracy", img_size=448) == 0.950
    assert uni_figure(bach, "linear", "balanced_accuracy") == 0.925
    assert uni_figure(None, "linear", "balanced_accuracy") is None


def _slide_metrics(root: Path, encoder: str) -> Path:
    """An ABMIL metrics.json on nsclc with TCGA and CPTAC cohorts, and two heatmap JPEGs."""
    folder = root / "eval" / encoder / "nsclc" / "abmil"
    (folder / "heatmaps").mkdir(parents=True)
    cohort = lambda ba, n: {"n_test": n, "balanced_accuracy": ba,  # noqa: E731
                            "balanced_accuracy_ci_low": ba - 0.1,
                            "balanced_accuracy_ci_high": ba + 0.1}  # fmt: skip
    record = {"encoder": encoder, "task": "nsclc", "protocol": "abmil", "img_size": None,
              "n_train": 40, "n_test": 30, **cohort(0.8, 30),
              "by_cohort": {"tcga": cohort(0.9, 20), "cptac": cohort(0.6, 10)}}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(record))
    with zipfile.ZipFile(ZIP) as zf:
        jpgs = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[:2]
        for slide, member in zip(("TCGA-1", "CPTAC-2"), jpgs, strict=True):
            (folder / "heatmaps" / f"{slide}.jpg").write_bytes(zf.read(member))
    return folder / "metrics.json"


def _segmentation_metrics(root: Path) -> Path:
    """A segmentation_probe metrics.json: Dice only, no interval."""
    path = root / "eval" / "uni" / "segpath_epithelium" / "segmentation_probe" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"encoder": "uni", "task": "segpath_epithelium", "img_size": 224,
                                "protocol": "segmentation_probe", "n_train": 8, "n_test": 4,
                                "dice": 0.71}))  # fmt: skip
    return path


def _compare_json(root: Path) -> Path:
    path = root / "eval" / "compare" / "crc100k" / "linear" / "random__vs__uni.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"task": "crc100k", "protocol": "linear", "encoder_a": "random",
                                "encoder_b": "uni", "metric": "balanced_accuracy",
                                "difference": -0.37, "p_value": 0.000999, "n_test": 60,
                                "n_permutations": 1000}))  # fmt: skip
    return path


def test_run_report_cohort_rows_segmentation_heatmaps_comparisons(
    report_inputs: dict, tmp_path: Path
) -> None:
    """Per-cohort rows with their UNI figure, Dice rows, heatmaps and comparisons all show."""
    out = tmp_path / "report"
    inputs = dict(report_inputs)
    inputs["metrics_jsons"] = [*inputs["metrics_jsons"], _slide_metrics(tmp_path, "uni"),
                               _segmentation_metrics(tmp_path)]  # fmt: skip
    run_report(**inputs, out_dir=out, tasks_yaml=ROOT / "config" / "tasks.yaml",
               compare_jsons=[_compare_json(tmp_path)])  # fmt: skip

    table = pd.read_csv(out / "summary.csv")
    nsclc = table[table.task == "nsclc"]
    assert nsclc["cohort"].fillna("").tolist() == ["", "cptac", "tcga"]
    assert nsclc["n_test"].tolist() == [30, 10, 20]
    # UNI reports nsclc per cohort only: the pooled row has no figure to stand beside.
    assert nsclc["uni_balanced_accuracy"].fillna(-1).tolist() == [-1, 0.889, 0.969]
    assert table.loc[table.task == "segpath_epithelium", "dice"].tolist() == [0.71]
    assert table.loc[table.task == "segpath_epithelium", "uni_dice"].tolist() == [0.827]

    text = (out / "index.html").read_text()
    assert "<th>cohort</th>" in text
    assert "Heatmaps" in text
    assert "nsclc / abmil / uni" in text
    assert "Encoder comparisons" in text
    assert "-0.370" in text
    parser = _Links()
    parser.feed(text)
    heat = [link for link in parser.links if "heatmaps" in link]
    assert "assets/heatmaps/uni/nsclc/abmil/TCGA-1.jpg" in heat
    assert len(set(heat)) == 2
    for link in parser.links:
        if not link.startswith("#"):
            assert (out / link).is_file(), link


def test_metric_table_prints_sizes_as_whole_numbers(tmp_path: Path) -> None:
    """img px stays 224 when a slide row (no img_size) turns the column to float."""
    roi = _metrics(tmp_path, "uni", "crc100k", "linear", 0.87)
    slide = _metrics(tmp_path, "uni", "camelyon16", "abmil", 0.9)
    record = json.loads(slide.read_text())
    slide.write_text(json.dumps({**record, "img_size": None}))
    out = tmp_path / "report"
    run_report(metrics_jsons=[roi, slide], curate_dirs=[], train_metrics_csv=None, out_dir=out)
    text = (out / "index.html").read_text()
    assert '<td class="num">224</td>' in text
    assert "224.000" not in text
