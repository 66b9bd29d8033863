"""Bad slides and configs fail with messages that name the file and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from tests.conftest import REPO, RESOURCES, SLIDES
from tests.workflow.dag import make_workdir, snakemake


def _tiff_without_mpp(path):
    """A real H&E tile saved as a plain TIFF with no resolution tags."""
    tile = np.asarray(
        Image.open(RESOURCES / "qc/tiles/medium-nuclei-score-level1-2.png").convert("RGB")
    )
    tifffile.imwrite(path, np.tile(tile, (2, 2, 1)), photometric="rgb")
    return path


@pytest.mark.slow
def test_bad_input_broken_slides_fail_alone_with_keep_going(tmp_path):
    """A missing path, a non-slide and a slide without mpp fail; the real slide still finishes."""
    not_a_slide = tmp_path / "notes.svs"
    not_a_slide.write_text("this is a text file, not a slide\n")
    slides = {
        "good": SLIDES / "CMU-1-Small-Region.svs",
        "missing": tmp_path / "does-not-exist.svs",
        "not_a_slide": not_a_slide,
        "no_mpp": _tiff_without_mpp(tmp_path / "no_mpp.tif"),
    }
    workdir = make_workdir(tmp_path / "run", slides)
    targets = [f"results/shards/{sid}.zarr/zarr.json" for sid in slides]
    proc = snakemake(workdir, "--keep-going", *targets, check=False)
    output = proc.stdout + proc.stderr

    assert proc.returncode != 0
    assert (workdir / "results/shards/good.zarr/zarr.json").is_file()
    for sid in ("missing", "not_a_slide", "no_mpp"):
        assert f"'{sid}'" in output, f"no message names slide {sid!r}"
        assert not (workdir / f"results/curate/{sid}/tissue.png").exists()
        assert not (workdir / f"results/shards/{sid}.zarr").exists()
    assert "mpp" in output
    assert "slides.tsv" in output


@pytest.mark.slow
def test_bad_input_manifest_mpp_override_rescues_slide(tmp_path):
    """The same slide without mpp metadata curates once the manifest gives its mpp."""
    slides = {"no_mpp": _tiff_without_mpp(tmp_path / "no_mpp.tif")}
    workdir = make_workdir(tmp_path / "run", slides, mpp={"no_mpp": 0.5})
    snakemake(workdir, "results/curate/no_mpp/tissue.png")
    assert (workdir / "results/curate/no_mpp/tissue.png").is_file()


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("seeds: 3\n", "seeds"),
        ("evaluate:\n  tasks: [no_such_task]\n", "no_such_task"),
        ("evaluate:\n  encoders: [no_such_encoder]\n", "no_such_encoder"),
        ("pretrain:\n  gpus: -1\n", "gpus"),
        ("evaluate:\n  params:\n    knn:\n      kk: 5\n", "evaluate.params.knn"),
        ("evaluate:\n  params:\n    knnn: {}\n", "knnn"),
        ("evaluate:\n  protocols: [knnn]\n", "knnn"),
        ("pretrain:\n  overrides:\n    schedule.total_stepz: 6\n", "total_stepz"),
        ("encoders:\n  random_init:\n    sede: 3\n", "sede"),
        ("encoders:\n  x:\n    kind: pretrained\n", "encoders"),
        ("curate:\n  tiling:\n    specs: [{size_px: 256, mpp: 0}]\n", "mpp"),
        # Checks common.smk makes beyond the schema (one dry run each, ~25 s under load).
        ('results_dir: "/."\n', "results_dir is '/.', the filesystem root"),
        ("tasks: nope.yaml\n", "config tasks: nope.yaml does not exist"),
        ("curate:\n  tiling:\n    overlap_fraction: 1.0\n", "curate.tiling.overlap_fraction"),
        (
            "encoders:\n  dino_demo: {kind: pretrained, run: other}\n",
            "encoders.dino_demo.run is 'other', but this workflow trains pretrain.run",
        ),
        # The recipe's high-res phase reads 512-px tiles that this curation would not cut.
        (
            "curate:\n  tiling:\n    specs: [{size_px: 256, mpp: 0.5}]\n"
            "pretrain:\n  overrides:\n    highres.steps: 2\n",
            "'highres.spec' is 512px_0.5mpp, which curate.tiling.specs does not cut",
        ),
    ],
)
def test_bad_input_invalid_config_fails_at_start(tmp_path, config_text, expected):
    """An invalid config is refused before any job runs, naming the offending key."""
    workdir = make_workdir(tmp_path / "run", {"good": SLIDES / "CMU-1-Small-Region.svs"})
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text)
    proc = snakemake(workdir, "-n", configfiles=(bad,), check=False)
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr


def test_bad_input_slide_named_like_a_run_output_is_allowed(tmp_path):
    """A slide called build_dataset plans normally (its sidecar no longer collides)."""
    workdir = make_workdir(tmp_path / "run", {"build_dataset": SLIDES / "CMU-1-Small-Region.svs"})
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_bad_input_invalid_manifest_fails_at_start(tmp_path):
    """A manifest row with a non-numeric mpp is refused at start-up, naming the column."""
    workdir = make_workdir(tmp_path / "run", {"good": SLIDES / "CMU-1-Small-Region.svs"})
    (workdir / "slides.tsv").write_text("slide_id\tpath\tmpp\ngood\tx.svs\tabc\n")
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    assert "mpp" in proc.stdout + proc.stderr


@pytest.mark.parametrize("results_dir", ["", "/", "//"])
def test_bad_input_results_dir_root_refused_by_schema(results_dir):
    """An empty results_dir or the filesystem root fails schema validation, naming the key."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["results_dir"] = results_dir
    with pytest.raises(WorkflowError, match="results_dir"):
        validate(config, schema=str(REPO / "workflow" / "schemas" / "config.schema.yaml"))


def test_bad_input_seed_beyond_32_bits_refused_by_schema():
    """numpy seeds its generators with 32 bits: a larger seed fails the schema at start-up,
    naming the key, instead of the pretrain job after curation."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    schema = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
    validate({**config, "seed": 2**32 - 1}, schema=schema)
    with pytest.raises(WorkflowError, match="seed"):
        validate({**config, "seed": 2**32}, schema=schema)
