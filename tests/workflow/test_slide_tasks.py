"""Slide-level and segmentation tasks through the workflow, on the real slides and bags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import RESOURCES, SLIDES
from tests.workflow.dag import make_workdir, snakemake

pytestmark = [pytest.mark.slow]

ENCODERS = ("random_init", "random_b")
# Labels a/b are arbitrary: a plumbing check that every WSI format reaches a metric, not a
# claim that the slides differ in any class. The test split needs both classes (a one-class
# test set is refused) and ABMIL a validation slide, which four tissues cannot give with
# CMU-1 and its DICOM copy as one case: the copy is the validation slide under its own case
# id, a shortcut of this plumbing check only (it touches early stopping, never the test).
# small_dicom.dcm has no pixel spacing: 0.25 µm/px is assumed for it.
WSI_ROWS = [
    ("cmu1_svs", "a", "train", "CMU-1", SLIDES / "CMU-1-Small-Region.svs", ""),
    ("cmu1_dicom", "a", "val", "CMU-1-dicom", SLIDES / "CMU-1-Small-Region-dicom", ""),
    ("os1", "b", "train", "OS-1", SLIDES / "OS-1-detail.ome.tif", ""),
    ("small_dicom", "b", "test", "pathml-small", SLIDES / "small_dicom.dcm", "0.25"),
    ("os2", "a", "test", "OS-2", SLIDES / "OS-2-ndpi.ome.tif", ""),
]
MOPADI = {
    "TCGA-3X-AAVA": RESOURCES / "features" / "TCGA-3X-AAVA-01Z-00-DX1.h5",
    "TCGA-AD-6964": RESOURCES / "features" / "TCGA-AD-6964-01Z-00-DX1.h5",
}
BAG_SPLITS = ("train", "train", "val", "test")


def _wsi_task(root: Path) -> Path:
    folder = root / "wsi_task"
    folder.mkdir()
    rows = ["slide_id,label,split,case_id,slide_path,mpp"]
    rows += [",".join(map(str, row)) for row in WSI_ROWS]
    (folder / "slides.csv").write_text("\n".join(rows) + "\n")
    return folder


def _bag_task(root: Path) -> Path:
    """Pseudo-slides: four patch groups of each real mopadi bag, in that bag's own layout.

    The label is the source slide, so it is learnable; chunks have no case_id (each is its
    own pseudo-case). Each encoder gets a copy under bags/{encoder}/ ({encoder} route).
    """
    folder = root / "bag_task"
    rows = ["slide_id,label,split,features_h5"]
    for label, path in MOPADI.items():
        with h5py.File(path) as src:
            layout = {key: src[key][:] for key in src}
        n = len(next(iter(layout.values())))
        for part, idx in enumerate(np.array_split(np.arange(n), len(BAG_SPLITS))):
            name = f"{label}_{part}"
            for encoder in ENCODERS:
                out = folder / "bags" / encoder / f"{name}.h5"
                out.parent.mkdir(parents=True, exist_ok=True)
                with h5py.File(out, "w") as dst:
                    for key, values in layout.items():
                        dst[key] = values[idx]
            rows.append(f"{name},{label},{BAG_SPLITS[part]},bags/{{encoder}}/{name}.h5")
    (folder / "slides.csv").write_text("\n".join(rows) + "\n")
    return folder


def _seg_task(root: Path) -> Path:
    """SegPath layout from real CMU-1 crops; masks are the crops' own tissue masks."""
    from unipipe.curate.tissue import TissueParams, segment_tissue
    from unipipe.slide import open_slide

    folder = root / "seg_task"
    crops = []
    with open_slide(SLIDES / "CMU-1-Small-Region.svs") as slide:
        width, height = slide.dimensions
        for y in range(0, height - 448, 300):
            for x in range(0, width - 448, 300):
                rgb = slide.read_region(x, y, 224, 1.0)
                mask = segment_tissue(rgb, mpp=1.0, params=TissueParams()).mask
                if 0.2 < (mask > 0).mean() < 0.8:  # both classes in every crop
                    crops.append((rgb, mask))
    assert len(crops) >= 6, "CMU-1 should have tissue edges in at least 6 crops"
    for i, (rgb, mask) in enumerate(crops[:8]):
        split = "test" if i % 3 == 2 else "train"
        for kind, image in (("images", rgb), ("masks", mask)):
            (folder / split / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / split / kind / f"crop{i}.png")
    return folder


def _write_config(root: Path, tasks: dict[str, Path]) -> Path:
    entry = {"level": "slide", "adapter": "slide_bags", "classes": ["a", "b"],
             "protocols": ["abmil", "mi_simpleshot"], "metrics": ["balanced_accuracy", "auroc"]}  # fmt: skip
    registry = {"tasks": {
        "wsi_plumbing": {**entry, "path": str(tasks["wsi"])},
        "bag_plumbing": {**entry, "path": str(tasks["bag"]), "classes": list(MOPADI)},
        # No slides.csv there: reported as skipped with that path, never planned.
        "absent_slides": {**entry, "path": str(tasks["wsi"].parent / "absent")},
        "seg_plumbing": {"level": "segmentation", "adapter": "segpath", "path": str(tasks["seg"]),
                         "classes": ["background", "tissue"], "protocols": ["segmentation_probe"],
                         "metrics": ["dice"]},
    }}  # fmt: skip
    (root / "slide_tasks.yaml").write_text(yaml.safe_dump(registry))
    config = {
        "tasks": str(root / "slide_tasks.yaml"),
        "encoders": {"random_b": {"kind": "random", "seed": 1,
                                  "pretrain_config": "config/pretrain/tiny_cpu.yaml"}},
        "evaluate": {"tasks": list(registry["tasks"]), "encoders": list(ENCODERS),
                     "params": {"abmil": {"max_epochs": 5, "min_epochs": 1, "patience": 2},
                                "bootstrap": {"n_resamples": 50}}},
    }  # fmt: skip
    (root / "slide_config.yaml").write_text(yaml.safe_dump(config))
    return root / "slide_config.yaml"


def _targets() -> list[str]:
    out = [f"results/eval/{e}/seg_plumbing/segmentation_probe/metrics.json" for e in ENCODERS]
    for task in ("wsi_plumbing", "bag_plumbing"):
        for e in ENCODERS:
            for p in ("abmil", "mi_simpleshot"):
                out += [f"results/eval/{e}/{task}/{p}/metrics.json",
                        f"results/eval/{e}/{task}/{p}/heatmaps"]  # fmt: skip
    return out


def _job_counts(proc) -> dict[str, int]:
    table = (proc.stdout + proc.stderr).split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.fixture(scope="module")
def slide_run(tmp_path_factory):
    """Dry-run plan, then a run of every slide and segmentation evaluation target."""
    root = tmp_path_factory.mktemp("slide_tasks")
    workdir = make_workdir(root / "run", {"CMU-1-Small-Region": SLIDES / "CMU-1-Small-Region.svs"})
    tasks = {"wsi": _wsi_task(root), "bag": _bag_task(root), "seg": _seg_task(root)}
    config = _write_config(root, tasks)
    plan = snakemake(workdir, "-n", configfiles=(config,))
    snakemake(workdir, *_targets(), configfiles=(config,))
    return workdir, config, plan


def test_slide_tasks_plan_expected_jobs(slide_run):
    """The default target plans one tiling job per WSI, one bag per encoder x WSI, and so on."""
    _, _, plan = slide_run
    counts = _job_counts(plan)
    n_wsi, n_enc = len(WSI_ROWS), len(ENCODERS)
    assert counts["tile_eval_slide"] == n_wsi
    assert counts["embed_slide"] == n_wsi * n_enc
    assert counts["evaluate_slides"] == 2 * n_enc * 2
    assert counts["evaluate_segmentation"] == n_enc


def test_slide_tasks_missing_manifest_is_skipped(slide_run):
    """A slide task without slides.csv is logged as skipped with that path and plans nothing."""
    _, _, plan = slide_run
    text = plan.stdout + plan.stderr
    assert "absent_slides" not in text.replace("task 'absent_slides' skipped", "")
    assert re.search(r"task 'absent_slides' skipped: data not found at \S*absent/slides.csv", text)


def test_slide_tasks_metrics_per_encoder_and_protocol(slide_run):
    """Every encoder x protocol has metrics.json with values in [0, 1] or null, and heatmaps."""
    workdir, _, _ = slide_run
    for task in ("wsi_plumbing", "bag_plumbing"):
        for encoder in ENCODERS:
            for protocol in ("abmil", "mi_simpleshot"):
                out = workdir / f"results/eval/{encoder}/{task}/{protocol}"
                m = json.loads((out / "metrics.json").read_text())
                assert (m["encoder"], m["protocol"], m["task"]) == (encoder, protocol, task)
                for name in ("balanced_accuracy", "auroc"):
                    assert m[name] is None or 0.0 <= m[name] <= 1.0
                heat = pd.read_parquet(out / "heatmaps.parquet")
                assert {"slide_id", "x", "y", "size_l0", "score"} <= set(heat.columns)
                assert sorted(p.name for p in (out / "heatmaps").iterdir())
    for encoder in ENCODERS:
        m = json.loads((workdir / f"results/eval/{encoder}/seg_plumbing/segmentation_probe/"
                                  "metrics.json").read_text())  # fmt: skip
        assert 0.0 <= m["dice"] <= 1.0


def test_slide_tasks_bag_rows_equal_kept_tiles(slide_run):
    """Each WSI's bag holds one row per kept tile of its tiles.parquet, with the same coords."""
    workdir, _, _ = slide_run
    embed = workdir / "results/embed"
    for slide_id, *_ in WSI_ROWS:
        tiles = pd.read_parquet(embed / f"tiles/wsi_plumbing/{slide_id}/tiles.parquet")
        kept = tiles[tiles["keep"]]
        for encoder in ENCODERS:
            with h5py.File(embed / f"{encoder}/wsi_plumbing/slides/{slide_id}.h5") as h5:
                assert h5["features"].shape[0] == len(kept) > 0
                np.testing.assert_array_equal(h5["coords"][:], kept[["x", "y"]].to_numpy())
                assert h5.attrs["size_l0"] > 0


def test_slide_tasks_one_metrics_path_reruns_alone(slide_run):
    """Forcing one metrics.json plans exactly that evaluation job."""
    workdir, config, _ = slide_run
    target = "results/eval/random_b/wsi_plumbing/abmil/metrics.json"
    proc = snakemake(workdir, "-n", "--forcerun", "evaluate_slides", "--", target,
                     configfiles=(config,))  # fmt: skip
    assert _job_counts(proc) == {"evaluate_slides": 1}


def test_slide_tasks_case_leak_fails_at_start(tmp_path):
    """A case with slides in train and test stops the run before any job, naming the CSV."""
    workdir = make_workdir(
        tmp_path / "run", {"CMU-1-Small-Region": SLIDES / "CMU-1-Small-Region.svs"}
    )
    leak = tmp_path / "leak"
    leak.mkdir()
    rows = ["slide_id,label,split,case_id,slide_path",
            f"s1,a,train,P1,{SLIDES / 'OS-1-detail.ome.tif'}",
            f"s2,b,test,P1,{SLIDES / 'OS-2-ndpi.ome.tif'}"]  # fmt: skip
    (leak / "slides.csv").write_text("\n".join(rows) + "\n")
    registry = {"tasks": {"leaky": {"level": "slide", "adapter": "slide_bags", "path": str(leak),
                                    "classes": ["a", "b"], "protocols": ["abmil"],
                                    "metrics": ["balanced_accuracy"]}}}  # fmt: skip
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(registry))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"tasks": str(tmp_path / "tasks.yaml"),
                                      "evaluate": {"tasks": ["leaky"]}}))  # fmt: skip
    proc = snakemake(workdir, "-n", configfiles=(config,), check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert str(leak / "slides.csv") in text
    assert "case 'P1'" in text


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("abmil", {"learning_rate": 1e-4}, r"'evaluate.params.abmil' has unknown field"),
        ("mi_simpleshot", {"topk": 5}, r"'evaluate.params.mi_simpleshot' has unknown field"),
        ("slides", {"val_fraction": 1.5}, r"val_fraction must be in \(0, 1\)"),
        ("segmentation_probe", {"C": 0}, r"evaluate.segmentation_probe: img_size >= 16, C > 0"),
    ],
)
def test_slide_params_refused_at_start(section, value, message, tmp_path):
    """A bad slide or segmentation parameter stops the run at start-up, naming the key."""
    workdir = make_workdir(
        tmp_path / "run", {"CMU-1-Small-Region": SLIDES / "CMU-1-Small-Region.svs"}
    )
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"evaluate": {"params": {section: value}}}))
    proc = snakemake(workdir, "-n", configfiles=(config,), check=False)
    assert proc.returncode != 0
    assert re.search(message, proc.stdout + proc.stderr)
