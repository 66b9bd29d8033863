"""Tests of unipipe.evaluate.slides.run_evaluate_slides on bags of real tile embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate.features import read_roi_features
from unipipe.evaluate.slides import read_slide_manifest, run_evaluate_slides

TASK = {"id": "demo_slides", "classes": ["LUAD", "LUSC"],
        "split": {"train": "train", "test": "test"},
        "metrics": ["balanced_accuracy", "weighted_f1", "auroc"]}  # fmt: skip
PARAMS = {"abmil": {"max_epochs": 15, "patience": 5, "min_epochs": 5, "lr": 1e-3},
          "bootstrap": {"n_resamples": 100}, "slides": {"val_fraction": 0.2}}  # fmt: skip


def _write_slides(h5: Path, out: Path) -> Path:
    """One pseudo-slide per 5 consecutive tiles of a class folder; both bag schemas used."""
    feats = read_roi_features(h5)
    rows = ["slide_id,label,split,features_h5,cohort"]
    for r in range(0, len(feats.paths), 5):
        # Rows are sorted by path and each split/class folder holds a multiple of 5 tiles,
        # so a chunk never mixes classes or splits.
        members = list(range(r, r + 5))
        assert len({(feats.labels[i], feats.split[i]) for i in members}) == 1
        name = f"s{r:03d}"
        with h5py.File(out / f"{name}.h5", "w") as f:
            key = "feats" if r % 2 else "features"
            f[key] = feats.features[members]
            f["coords"] = np.zeros((len(members), 2), np.int64)
        cohort = "tcga" if (r // 5) % 2 else "cptac"
        rows.append(f"{name},{feats.label_names[feats.labels[r]]},{feats.split[r]},{name}.h5,"
                    f"{cohort}")  # fmt: skip
    (out / "slides.csv").write_text("\n".join(rows) + "\n")
    return out / "slides.csv"


def test_run_evaluate_slides_learns_and_writes(demo_h5: Path, tmp_path: Path) -> None:
    """ABMIL on 26 train / 12 test pseudo-slides beats chance; outputs follow metrics.json."""
    manifest = _write_slides(demo_h5, tmp_path)
    run_evaluate_slides(manifest, task=TASK, params=PARAMS, seed=0, encoder_name="tiny",
                        metrics_json=tmp_path / "m.json", predictions_parquet=tmp_path / "p.pq",
                        sidecar=tmp_path / "s.json", heatmaps_parquet=tmp_path / "h.pq")  # fmt: skip
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["protocol"], m["encoder"], m["n_test"]) == ("abmil", "tiny", 12)
    attention = pq.read_table(tmp_path / "h.pq").to_pandas().groupby("slide_id")["score"].sum()
    np.testing.assert_allclose(attention.to_numpy(), 1.0, atol=1e-5)
    assert m["n_train"] + m["n_val"] == 26
    assert m["balanced_accuracy_ci_low"] <= m["balanced_accuracy"] <= m["balanced_accuracy_ci_high"]
    assert m["auroc"] > 0.6
    assert pq.read_table(tmp_path / "p.pq").num_rows == 12
    cohorts = m["by_cohort"]
    assert sorted(cohorts) == ["cptac", "tcga"]
    assert cohorts["tcga"]["n_test"] + cohorts["cptac"]["n_test"] == 12
    assert "balanced_accuracy_ci_low" in cohorts["tcga"]


def test_run_evaluate_slides_mi_simpleshot(demo_h5: Path, tmp_path: Path) -> None:
    """MI-SimpleShot (top-5 patches per prototype) on the same pseudo-slides beats chance."""
    manifest = _write_slides(demo_h5, tmp_path)
    run_evaluate_slides(manifest, task=TASK, params={"bootstrap": {"n_resamples": 50}}, seed=0,
                        metrics_json=tmp_path / "m.json", predictions_parquet=tmp_path / "p.pq",
                        sidecar=tmp_path / "s.json", protocol="mi_simpleshot",
                        heatmaps_parquet=tmp_path / "h.pq")  # fmt: skip
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["protocol"] == "mi_simpleshot"
    heat = pq.read_table(tmp_path / "h.pq").to_pandas()
    assert len(heat) == 12 * 5  # every patch of the 12 test slides
    assert heat.groupby("slide_id").size().eq(5).all()
    assert (heat["x"] == 0).all()
    assert m["extra"]["top_k"] == 5
    assert m["auroc"] > 0.6


def test_read_slide_manifest_requires_columns(tmp_path: Path) -> None:
    """A manifest without features_h5 raises ConfigError listing the needed columns."""
    (tmp_path / "slides.csv").write_text("slide_id,label,split\na,LUAD,train\n")
    with pytest.raises(ConfigError, match="features_h5"):
        read_slide_manifest(tmp_path / "slides.csv")


def test_hold_out_moves_whole_cases() -> None:
    """The validation hold-out never splits a case: its slides all move or all stay."""
    from unipipe.evaluate.slides import _hold_out

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    cases = np.array(["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4"], dtype=object)
    for seed in range(10):
        val = _hold_out(labels, 0.5, seed, cases)
        for case in set(cases):
            assert len(set(val[cases == case])) == 1
        assert val[labels == 0].sum() == 2
        assert val[labels == 1].sum() == 2


SVS = Path(__file__).resolve().parents[2] / "resources" / "slides" / "CMU-1-Small-Region.svs"
BAG = Path(__file__).resolve().parents[2] / "resources" / "features" / "TCGA-AD-6964-01Z-00-DX1.h5"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["slide_id,label,features_h5", f"a,x,{BAG}"], r"lacks column\(s\) \['split'\]"),
        (["slide_id,label,split", "a,x,train"], "neither a features_h5 nor a slide_path"),
        (["slide_id,label,split,features_h5,slide_path", f"a,x,train,{BAG},{SVS}"],
         r"line 2 \(slide 'a'\): give either .* not both"),
        (["slide_id,label,split,features_h5,slide_path", "a,x,train,,"],
         r"line 2 \(slide 'a'\): give either .* one of them"),
        (["slide_id,label,split,slide_path", f"a,x,train,{SVS}", "b,x,test,missing.svs"],
         r"line 3 \(slide 'b'\): slide_path .*missing.svs does not exist"),
        (["slide_id,label,split,features_h5", "a,x,train,bags/{encoder}/a.h5"],
         r"line 2 \(slide 'a'\): features_h5 .*bags/enc/a.h5 does not exist for encoder 'enc'"),
        (["slide_id,label,split,slide_path,mpp", f"a,x,train,{SVS},fast"], "mpp 'fast'"),
        (["slide_id,label,split,features_h5", f"a/b,x,train,{BAG}"], "slide_id may hold only"),
        (["slide_id,label,split,features_h5", f"a,x,train,{BAG}", f"a,x,test,{BAG}"],
         r"\['a'\] appear more than once"),
        (["slide_id,label,split,case_id,features_h5", f"a,x,train,P1,{BAG}",
          f"b,y,test,P1,{BAG}", f"c,y,test,P2,{BAG}"],
         r"case 'P1' has slides in splits \['test', 'train'\] \(a, b\)"),
    ],
)  # fmt: skip
def test_read_slide_manifest_refuses_bad_rows(rows: list[str], message: str,
                                              tmp_path: Path) -> None:  # fmt: skip
    """Each bad manifest is refused with a ConfigError naming the CSV (and line) and the fix."""
    (tmp_path / "slides.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=message) as err:
        read_slide_manifest(tmp_path / "slides.csv", encoder="enc")
    assert str(tmp_path / "slides.csv") in str(err.value)


def test_read_slide_manifest_resolves_sources(tmp_path: Path) -> None:
    """Paths resolve against the CSV; {encoder} is filled in; mpp, case_id are read."""
    (tmp_path / "bags" / "enc").mkdir(parents=True)
    (tmp_path / "bags" / "enc" / "b.h5").write_bytes(BAG.read_bytes())
    rows = ["slide_id,label,split,case_id,features_h5,slide_path,mpp",
            "b,LUSC,test,P2,bags/{encoder}/b.h5,,", f"a,LUAD,train,P1,,{SVS},0.25"]  # fmt: skip
    (tmp_path / "slides.csv").write_text("\n".join(rows) + "\n")
    table = read_slide_manifest(tmp_path / "slides.csv", encoder="enc")
    assert table["slide_id"].tolist() == ["a", "b"]
    assert table["features_h5"].tolist() == ["", str(tmp_path / "bags" / "enc" / "b.h5")]
    assert table["slide_path"].tolist() == [str(SVS), ""]
    assert table["mpp"].iloc[0] == 0.25
    assert np.isnan(table["mpp"].iloc[1])
    templated = read_slide_manifest(tmp_path / "slides.csv")
    assert templated["features_h5"].iloc[1].endswith("bags/{encoder}/b.h5")


def test_run_evaluate_slides_needs_bags_of_wsi_rows(demo_h5: Path, tmp_path: Path) -> None:
    """A slide_path row without an embedded bag is refused, naming the slide."""
    manifest = _bag_task(tmp_path, GOOD_ROWS)
    rows = manifest.read_text().splitlines()
    rows = [rows[0] + ",slide_path"] + [r + "," for r in rows[1:]] + [f"w1,LUAD,train,,{SVS}"]
    manifest.write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=r"\['w1'\] have a slide_path but no bag"):
        run_evaluate_slides(tmp_path / "slides.csv", task=TASK, params=PARAMS, seed=0,
                            metrics_json=tmp_path / "m.json", predictions_parquet=tmp_path / "p",
                            sidecar=tmp_path / "s.json")  # fmt: skip


def test_run_evaluate_slides_heatmaps_carry_size_l0(demo_h5: Path, tmp_path: Path) -> None:
    """heatmaps.parquet has size_l0 from the bag's attribute, -1 where the bag has none."""
    manifest = _write_slides(demo_h5, tmp_path)
    for h5 in sorted(tmp_path.glob("s*.h5"))[::2]:
        with h5py.File(h5, "a") as f:
            f.attrs["size_l0"] = 512
    run_evaluate_slides(manifest, task=TASK, params={"bootstrap": {"n_resamples": 0}}, seed=0,
                        metrics_json=tmp_path / "m.json", predictions_parquet=tmp_path / "p.pq",
                        sidecar=tmp_path / "s.json", protocol="mi_simpleshot",
                        heatmaps_parquet=tmp_path / "h.pq")  # fmt: skip
    heat = pq.read_table(tmp_path / "h.pq").to_pandas()
    assert set(heat["size_l0"]) == {512, -1}


def _bag_task(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """slides.csv of (slide_id, label, split) rows, each with a 40-patch bag cut from a real one.

    Consecutive patches of the real TCGA-AD-6964 bag, 40 per slide, so every bag is real data.
    """
    with h5py.File(BAG) as src:
        feats = src["feats"][:]
    lines = ["slide_id,label,split,features_h5"]
    for i, (slide_id, label, split) in enumerate(rows):
        with h5py.File(tmp_path / f"{slide_id}.h5", "w") as f:
            f["features"] = feats[40 * i : 40 * (i + 1)]
        lines.append(f"{slide_id},{label},{split},{slide_id}.h5")
    (tmp_path / "slides.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "slides.csv"


GOOD_ROWS = [("a0", "LUAD", "train"), ("a1", "LUAD", "train"), ("a2", "LUAD", "val"),
             ("a3", "LUAD", "test"), ("b0", "LUSC", "train"), ("b1", "LUSC", "train"),
             ("b2", "LUSC", "val"), ("b3", "LUSC", "test")]  # fmt: skip


def _evaluate(manifest: Path, tmp_path: Path, protocol: str = "mi_simpleshot") -> dict:
    run_evaluate_slides(manifest, task=TASK, params={"bootstrap": {"n_resamples": 0}}, seed=0,
                        metrics_json=tmp_path / "m.json", predictions_parquet=tmp_path / "p.pq",
                        sidecar=tmp_path / "s.json", protocol=protocol)  # fmt: skip
    return json.loads((tmp_path / "m.json").read_text())


def test_bag_task_control_runs(tmp_path: Path) -> None:
    """The unaltered 8-slide task of the cases below evaluates (so each refusal is the change)."""
    m = _evaluate(_bag_task(tmp_path, GOOD_ROWS), tmp_path)
    assert (m["n_train"], m["n_val"], m["n_test"]) == (4, 2, 2)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # A label typo used to drop its rows silently (2 of 8 slides gone, metrics still written).
        ({"a0": ("LUAd", "train"), "a3": ("LUAd", "test")},
         r"label\(s\) not among the task's classes \['LUAD', 'LUSC'\]: 'LUAd' \(2 slides: "
         r"line\(s\) 2, 5\)"),
        # A split typo used to drop the row silently (the test set lost its LUSC slide).
        ({"b3": ("LUSC", "Test")},
         r"split value\(s\) the task does not use: 'Test' \(1 slide: line\(s\) 9\); accepted "
         r"\(case-sensitive\): \['train', 'test', 'val'\]"),
        # A class only in val and test: ABMIL never sees it, MI-SimpleShot had no prototype.
        ({"b0": ("LUSC", "val"), "b1": ("LUSC", "val")},
         r"class 'LUSC' has no slide in the 'train' split \(only in \['test', 'val'\]\)"),
        # One test class: balanced accuracy came out as the recall of that class.
        ({"b3": ("LUSC", "train")}, r"the 'test' split holds only class 'LUAD'"),
    ],
)  # fmt: skip
def test_run_evaluate_slides_refuses_labels_and_splits(
    edit: dict[str, tuple[str, str]], message: str, tmp_path: Path
) -> None:
    """Labels, splits and class coverage the task cannot score are refused, naming the CSV."""
    rows = [(s, *edit.get(s, (label, split))) for s, label, split in GOOD_ROWS]
    manifest = _bag_task(tmp_path, rows)
    with pytest.raises(ConfigError, match=message) as err:
        _evaluate(manifest, tmp_path)
    assert str(manifest) in str(err.value)
    # The workflow runs the same checks at start-up, given the task's classes and split.
    with pytest.raises(ConfigError, match=message):
        read_slide_manifest(manifest, classes=TASK["classes"], split=TASK["split"])


def test_read_slide_manifest_uses_the_task_split_names(tmp_path: Path) -> None:
    """A task whose split names are not train/test accepts them (and val), and no others."""
    rows = [(s, label, {"train": "dev", "test": "holdout"}.get(split, split))
            for s, label, split in GOOD_ROWS]  # fmt: skip
    manifest = _bag_task(tmp_path, rows)
    split = {"source": "official", "train": "dev", "test": "holdout"}
    assert len(read_slide_manifest(manifest, classes=["LUAD", "LUSC"], split=split)) == 8
    with pytest.raises(ConfigError, match=r"'dev' \(4 slides"):
        read_slide_manifest(manifest, split={})


def _rewrite_bag(path: Path, features: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["features"] = features


@pytest.mark.parametrize("protocol", ["abmil", "mi_simpleshot"])
def test_run_evaluate_slides_refuses_empty_bag(protocol: str, tmp_path: Path) -> None:
    """A bag with 0 patches (ABMIL predicted ~0.5 for it, MI-SimpleShot NaN) is refused."""
    manifest = _bag_task(tmp_path, GOOD_ROWS)
    _rewrite_bag(tmp_path / "a3.h5", np.zeros((0, 512), np.float32))
    with pytest.raises(ConfigError, match=r"a3.h5 \(slide 'a3' of .*slides.csv\) has 0 "
                       r"patches: re-embed the slide .* or drop the row"):  # fmt: skip
        _evaluate(manifest, tmp_path, protocol)


def test_run_evaluate_slides_refuses_mixed_feature_widths(tmp_path: Path) -> None:
    """A bag of another width (another encoder's) is named with its shape and the expected one."""
    manifest = _bag_task(tmp_path, GOOD_ROWS)
    with h5py.File(tmp_path / "b1.h5") as f:
        narrow = f["features"][:, :384]
    _rewrite_bag(tmp_path / "b1.h5", narrow)
    with pytest.raises(ConfigError, match=r"b1.h5 \(slide 'b1' of .*\) has features of shape "
                       r"\(40, 384\); expected \(N, 512\) like .*a0.h5"):  # fmt: skip
        _evaluate(manifest, tmp_path, "abmil")


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (np.float32("nan"), r"1 of 40 patches have NaN or infinite features \(first: patch 3\)"),
        (np.float32("inf"), r"1 of 40 patches have NaN or infinite features \(first: patch 3\)"),
        (None, r"has shape \(512,\); a bag holds \(N, D\) patch features"),
    ],
)
def test_run_evaluate_slides_refuses_bad_values(features, message: str, tmp_path: Path) -> None:
    """NaN / inf patches and a 1-D slide embedding are refused naming the bag file."""
    manifest = _bag_task(tmp_path, GOOD_ROWS)
    with h5py.File(tmp_path / "b3.h5") as f:
        real = f["features"][:]
    if features is None:
        real = real[0]
    else:
        real[3, 7] = features
    _rewrite_bag(tmp_path / "b3.h5", real)
    with pytest.raises(ConfigError, match=message) as err:
        _evaluate(manifest, tmp_path)
    assert str(tmp_path / "b3.h5") in str(err.value)


def test_fit_prototypes_names_the_missing_class() -> None:
    """MI-SimpleShot's error for a class without training slides gives the class's name."""
    from unipipe.evaluate.prototypes import fit_prototypes

    with h5py.File(BAG) as src:
        bags = [src["feats"][:40], src["feats"][40:80]]
    with pytest.raises(ConfigError, match="no training slide of class 'LUSC'"):
        fit_prototypes(bags, np.array([0, 0]), n_classes=2, class_names=["LUAD", "LUSC"])
