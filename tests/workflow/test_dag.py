"""The whole DAG on real slides: outputs, caching, reruns and determinism."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from tests.workflow.dag import TEST_SLIDES, make_workdir, planned_rules, snakemake

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One full run of the DAG on two real slides (Aperio SVS and OME-TIFF)."""
    workdir = make_workdir(tmp_path_factory.mktemp("dag"), TEST_SLIDES)
    snakemake(workdir)
    return workdir


def test_dag_shards_hold_selected_patches_equal_to_slide_reads(demo_run):
    """Each shard holds the selected number of 256x256x3 uint8 patches, equal to direct reads."""
    from unipipe.slide import open_slide

    for slide_id, path in TEST_SLIDES.items():
        selected = pd.read_parquet(demo_run / f"results/curate/{slide_id}/selected.parquet")
        selected = selected[selected["size_px"] == 256]  # the first spec sits at the root
        group = zarr.open_group(demo_run / f"results/shards/{slide_id}.zarr", mode="r")
        patches = group["patches"]
        assert patches.shape == (len(selected), 256, 256, 3)
        assert patches.dtype == np.uint8
        assert len(selected) > 0
        x, y, mpp = group["x"][:], group["y"][:], group["mpp"][:]
        with open_slide(path, slide_id=slide_id) as slide:
            for i in range(0, len(selected), max(1, len(selected) // 8)):
                direct = slide.read_region(int(x[i]), int(y[i]), 256, float(mpp[i]))
                np.testing.assert_array_equal(patches[i], direct)
        if slide_id.startswith("CMU"):
            _assert_equals_openslide(path, patches, x, y, mpp)


def test_dag_shard_stores_hold_only_zarr_files(demo_run):
    """A shard store holds only Zarr's metadata and chunk files (no .snakemake_timestamp)."""
    for slide_id in TEST_SLIDES:
        store = demo_run / f"results/shards/{slide_id}.zarr"
        files = [p.relative_to(store) for p in store.rglob("*") if p.is_file()]
        assert Path("zarr.json") in files
        assert [f for f in files if f.name != "zarr.json" and "c" not in f.parts[:-1]] == []


def _assert_equals_openslide(path, patches, x, y, mpp):
    """Patches of the 0.499-mpp SVS equal OpenSlide's own level-0 reads.

    Within the reader's level tolerance (0.5 vs 0.499 mpp is 0.2%) level 0 is read 1:1, so
    the comparison is exact; otherwise OpenSlide's region is resized the same way.
    """
    import cv2
    import openslide

    from unipipe.slide.base import LEVEL_MPP_TOLERANCE

    with openslide.OpenSlide(str(path)) as osr:
        base_mpp = float(osr.properties[openslide.PROPERTY_NAME_MPP_X])
        for i in range(0, len(x), max(1, len(x) // 4)):
            scale = float(mpp[i]) / base_mpp
            size0 = 256 if abs(scale - 1) <= LEVEL_MPP_TOLERANCE else round(256 * scale)
            region = np.asarray(osr.read_region((int(x[i]), int(y[i])), 0, (size0, size0)))
            region = region[..., :3]
            if size0 == 256:
                np.testing.assert_array_equal(patches[i], region)
            else:
                region = cv2.resize(region, (256, 256), interpolation=cv2.INTER_AREA)
                diff = np.abs(region.astype(int) - patches[i].astype(int))
                assert diff.mean() < 2.0, f"patch {i} differs from OpenSlide by {diff.mean():.2f}"


def test_dag_metrics_lie_in_unit_interval(demo_run):
    """Every metrics.json holds balanced accuracy, weighted F1 and AUROC in [0, 1]."""
    files = sorted((demo_run / "results/eval").rglob("metrics.json"))
    protocols = {p.parent.name for p in files}
    assert {"linear", "knn", "simpleshot"} <= protocols
    assert {p.parents[2].name for p in files} == {"dino_demo", "random_init"}
    for path in files:
        metrics = json.loads(path.read_text())
        for key in ("balanced_accuracy", "weighted_f1", "auroc"):
            value = metrics[key]["value"] if isinstance(metrics[key], dict) else metrics[key]
            assert 0.0 <= value <= 1.0, f"{path}: {key}={value}"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value and not value.startswith(("#", "data:")):
                self.links.append(value)


def test_dag_report_links_resolve(demo_run):
    """The report exists, names both encoders, and every file it links to exists."""
    report = demo_run / "results/report/index.html"
    parser = _Links()
    parser.feed(report.read_text())
    assert len(parser.links) >= 2 * len(TEST_SLIDES) + 1
    for link in parser.links:
        assert (report.parent / link).is_file(), f"report links to missing {link}"
    summary = pd.read_csv(demo_run / "results/report/summary.csv")
    assert set(summary["encoder"]) == {"dino_demo", "random_init"}


def test_dag_every_stage_writes_a_sidecar(demo_run):
    """Each stage's sidecar records parameters, library versions and input checksums."""
    sidecars = [
        *sorted((demo_run / "results/curate").glob("*/*.json")),
        demo_run / "results/shards/build_dataset.json",
        demo_run / "results/train/demo/pretrain.json",
    ]
    sidecars = [p for p in sidecars if p.name != "qc.json"]
    assert len(sidecars) >= 4 * len(TEST_SLIDES) + 2
    for path in sidecars:
        record = json.loads(path.read_text())
        assert {"params", "versions", "inputs"} <= set(record), path
        assert "numpy" in record["versions"], path


def test_dag_second_run_does_nothing(demo_run):
    """With nothing changed, a second run plans no job."""
    assert planned_rules(snakemake(demo_run, "-n")) == set()


def test_dag_changed_eval_param_reruns_only_evaluation(demo_run):
    """Changing an evaluation parameter plans only evaluate, its comparison and report jobs."""
    changed = demo_run / "changed_eval.yaml"
    changed.write_text("evaluate:\n  params:\n    knn:\n      k: 5\n")
    proc = snakemake(demo_run, "-n", configfiles=(changed,))
    assert planned_rules(proc) - {"all"} == {"evaluate", "compare_encoders", "report"}
    # Only the k-NN evaluations, one per encoder; linear and SimpleShot stay cached.
    assert len(re.findall(r"^\s*(?:local)?rule evaluate:", proc.stdout + proc.stderr, re.M)) == 2

    target = "results/eval/dino_demo/tcga_luadlusc_demo/knn/metrics.json"
    snakemake(demo_run, target, configfiles=(changed,))
    assert json.loads((demo_run / target).read_text())["extra"]["k"] == 5


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_dag_curation_rerun_is_byte_identical(demo_run):
    """Rerunning every curation stage with the same seed reproduces every byte."""
    before = {
        **_digest_tree(demo_run / "results/curate"),
        **{f"shards/{k}": v for k, v in _digest_tree(demo_run / "results/shards").items()},
    }
    snakemake(demo_run, "--forcerun", "segment_tissue", "--", "results/shards/index.parquet")
    after = {
        **_digest_tree(demo_run / "results/curate"),
        **{f"shards/{k}": v for k, v in _digest_tree(demo_run / "results/shards").items()},
    }
    assert before.keys() == after.keys()
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"curation outputs changed on rerun: {changed}"
