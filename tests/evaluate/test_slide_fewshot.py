"""Tests of unipipe.evaluate.slide_fewshot on bags of real TCGA LUAD/LUSC tile embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate import slides
from unipipe.evaluate.abmil import abmil_sweep_protocol
from unipipe.evaluate.features import read_roi_features
from unipipe.evaluate.slide_fewshot import (
    SlideFewShotParams,
    slide_fewshot_curve,
    slide_fewshot_protocol,
)

# Small ABMIL and few epochs: these tests check sampling and bookkeeping, not accuracy.
PARAMS = {
    "abmil": {"hidden_dim": 32, "attn_dim": 16, "lr": 1e-3},
    "slide_fewshot": {"shots": [1, 2, 4], "runs": 2, "epochs": 3},
}


def _group_bags(h5: Path, split: str, per_group: int, seed: int) -> tuple[list, np.ndarray]:
    """Bags of 5 tiles drawn within each source group (<group>_<i>_<suffix>.jpg)."""
    feats = read_roi_features(h5)
    groups: dict[tuple[int, str], list[int]] = {}
    for r in feats.subset(split):
        name = feats.paths[r].rsplit("/", 1)[-1]
        groups.setdefault((int(feats.labels[r]), name.split("_")[0]), []).append(int(r))
    rng = np.random.default_rng(seed)
    bags, labels = [], []
    for (label, _), members in sorted(groups.items()):
        for _ in range(per_group):
            bags.append(feats.features[rng.choice(members, size=5, replace=False)])
            labels.append(label)
    return bags, np.array(labels)


@pytest.fixture(scope="module")
def slide_data(demo_h5: Path) -> SimpleNamespace:
    """Train bags split into train / val (every 4th), test bags with their labels."""
    bags, labels = _group_bags(demo_h5, "train", 4, 0)
    test, y_test = _group_bags(demo_h5, "test", 2, 1)
    val = np.arange(len(bags)) % 4 == 0
    return SimpleNamespace(
        train=[b for b, v in zip(bags, val, strict=True) if not v], y_train=labels[~val],
        val=[b for b, v in zip(bags, val, strict=True) if v], y_val=labels[val],
        test=test, y_test=y_test, n_classes=2,
    )  # fmt: skip


def test_slide_fewshot_supports_are_balanced_and_disjoint_from_test(
    slide_data: SimpleNamespace,
) -> None:
    """Each support holds K distinct train/val slides per class and no test slide."""
    _, fitted = slide_fewshot_protocol(slide_data, PARAMS, seed=0)
    pool = [*slide_data.train, *slide_data.val]
    pool_y = np.concatenate([slide_data.y_train, slide_data.y_val])
    test_bytes = {b.tobytes() for b in slide_data.test}
    for k, runs in fitted["extra"]["support_rows"].items():
        assert len(runs) == 2
        for rows in runs:
            assert len(set(rows)) == len(rows) == 2 * int(k)
            assert np.bincount(pool_y[rows], minlength=2).tolist() == [int(k), int(k)]
            assert not {pool[i].tobytes() for i in rows} & test_bytes


def test_slide_fewshot_curve_has_roi_layout(slide_data: SimpleNamespace) -> None:
    """The curve has one row per K run, each metric summarised with the ROI curve's keys."""
    probs, fitted = slide_fewshot_protocol(slide_data, PARAMS, seed=0)
    curve = fitted["extra"]["curve"]
    assert sorted(curve, key=int) == ["1", "2", "4"]
    for row in curve.values():
        assert row["n_episodes"] == 2
        for name in ("balanced_accuracy", "weighted_f1", "auroc"):
            s = row[name]
            assert {"mean", "std", "q025", "q975"} <= set(s)
            assert s["min"] <= s["q025"] <= s["mean"] <= s["q975"] <= s["max"]
    assert fitted["extra"]["headline_shots"] == 4
    np.testing.assert_array_equal(probs, fitted["run_probs"]["4"][0])
    assert probs.shape == (len(slide_data.test), 2)
    assert len(fitted["heatmaps"]) == len(slide_data.test)


def test_slide_fewshot_curve_without_test_labels_in_data(slide_data: SimpleNamespace) -> None:
    """Data without y_test (slides._SlideData) gives no curve; slide_fewshot_curve adds it."""
    labelled = slide_fewshot_protocol(slide_data, PARAMS, seed=0)[1]
    unlabelled = SimpleNamespace(**{k: v for k, v in vars(slide_data).items() if k != "y_test"})
    fitted = slide_fewshot_protocol(unlabelled, PARAMS, seed=0)[1]
    assert "curve" not in fitted["extra"]
    assert slide_fewshot_curve(fitted, slide_data.y_test) == labelled["extra"]["curve"]


def test_slide_fewshot_is_seeded_and_blind_to_test_labels(slide_data: SimpleNamespace) -> None:
    """Same seed: same probs and supports, even with shuffled test labels; new seed differs."""
    a, fa = slide_fewshot_protocol(slide_data, PARAMS, seed=0)
    shuffled = SimpleNamespace(**{**vars(slide_data), "y_test": slide_data.y_test[::-1]})
    b, fb = slide_fewshot_protocol(shuffled, PARAMS, seed=0)
    np.testing.assert_array_equal(a, b)
    assert fa["extra"]["support_rows"] == fb["extra"]["support_rows"]
    c, fc = slide_fewshot_protocol(slide_data, PARAMS, seed=1)
    assert fc["extra"]["support_rows"] != fa["extra"]["support_rows"]
    assert not np.array_equal(a, c)


def test_slide_fewshot_learns_at_k16(slide_data: SimpleNamespace) -> None:
    """At K = 16 the test AUROC beats chance (measured 0.685-0.694 over seeds and epochs)."""
    params = {"abmil": {"hidden_dim": 64, "attn_dim": 32, "lr": 1e-3},
              "slide_fewshot": {"shots": [16], "runs": 2, "epochs": 5}}  # fmt: skip
    _, fitted = slide_fewshot_protocol(slide_data, params, seed=0)
    assert fitted["extra"]["curve"]["16"]["auroc"]["mean"] > 0.6


def test_slide_fewshot_skips_k_above_the_pool(slide_data: SimpleNamespace) -> None:
    """A K larger than a class's train + val slides is skipped and listed."""
    params = {**PARAMS, "slide_fewshot": {"shots": [2, 1000], "runs": 1, "epochs": 1}}
    _, fitted = slide_fewshot_protocol(slide_data, params, seed=0)
    assert fitted["extra"]["skipped_shots"] == [1000]
    assert list(fitted["extra"]["curve"]) == ["2"]
    assert (
        fitted["extra"]["pool_per_class"]
        == np.bincount(np.concatenate([slide_data.y_train, slide_data.y_val])).tolist()
    )


def test_slide_fewshot_refuses_when_every_k_is_too_large(slide_data: SimpleNamespace) -> None:
    """No K fits the pool: ConfigError naming the key and the class counts."""
    params = {**PARAMS, "slide_fewshot": {"shots": [1000]}}
    with pytest.raises(ConfigError, match=r"evaluate\.slide_fewshot\.shots"):
        slide_fewshot_protocol(slide_data, params, seed=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("shots", (0, 2)), ("runs", 0), ("epochs", 0), ("lr", -1.0), ("metrics", ("nope",))],
)
def test_slide_fewshot_params_reject_bad_values(field: str, value: object) -> None:
    """Each invalid setting raises ConfigError naming evaluate.slide_fewshot."""
    with pytest.raises(ConfigError, match=r"evaluate\.slide_fewshot"):
        SlideFewShotParams(**{field: value})


def test_slide_fewshot_params_sort_shots() -> None:
    """Shots are stored sorted and without repeats, so the largest K is the last."""
    assert SlideFewShotParams(shots=(8, 1, 8, 2)).shots == (1, 2, 8)


@pytest.mark.parametrize(
    ("name", "fn", "key", "value"),
    [
        ("abmil_fewshot", slide_fewshot_protocol, "headline_shots", 4),
        ("abmil_sweep", abmil_sweep_protocol, "chosen_lr", 1e-3),
    ],
)
def test_protocols_plug_into_run_evaluate_slides(
    slide_data: SimpleNamespace, tmp_path: Path, name: str, fn: object, key: str, value: object,
) -> None:  # fmt: skip
    """Registered in SLIDE_PROTOCOLS, each runs through the slide stage to a metrics.json."""
    assert slides.SLIDE_PROTOCOLS[name] is fn
    rows = ["slide_id,label,split,features_h5"]
    splits = [("train", slide_data.train, slide_data.y_train),
              ("test", slide_data.test, slide_data.y_test)]  # fmt: skip
    for split, bags, labels in splits:
        for i, (bag, label) in enumerate(zip(bags, labels, strict=True)):
            with h5py.File(tmp_path / f"{split}{i}.h5", "w") as f:
                f["features"] = bag
            rows.append(f"{split}{i},{['LUAD', 'LUSC'][label]},{split},{split}{i}.h5")
    (tmp_path / "slides.csv").write_text("\n".join(rows) + "\n")
    params = {**PARAMS, "abmil": {**PARAMS["abmil"], "lrs": [1e-3], "max_epochs": 2,
                                  "min_epochs": 1, "patience": 1},
              "bootstrap": {"n_resamples": 10}}  # fmt: skip
    slides.run_evaluate_slides(
        tmp_path / "slides.csv", task={"id": "t", "classes": ["LUAD", "LUSC"]}, params=params,
        seed=0, protocol=name, metrics_json=tmp_path / "m.json",
        predictions_parquet=tmp_path / "p.pq", sidecar=tmp_path / "s.json",
    )  # fmt: skip
    extra = json.loads((tmp_path / "m.json").read_text())["extra"]
    assert extra[key] == value
    if name == "abmil_fewshot":  # the stage hands the test labels over, so the curve is there
        assert sorted(extra["curve"], key=int) == ["1", "2", "4"]
    assert (tmp_path / "s.json").exists()
