"""Tests of unipipe.report.compare: comparison records and the report's comparison table."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unipipe.errors import ConfigError
from unipipe.report.compare import comparison_paths, comparison_table, run_compare_encoders

ROOT = Path(__file__).resolve().parents[2]
ZIP = ROOT / "resources" / "tiles" / "tcga_luadlusc.zip"


def _test_tiles() -> tuple[list[str], np.ndarray]:
    """Paths and labels (LUAD 0, LUSC 1) of the 60 test tiles of the bundled TCGA zip."""
    with zipfile.ZipFile(ZIP) as zf:
        paths = sorted(n for n in zf.namelist() if "/test/" in n and n.endswith(".jpg"))
    return paths, np.array([0 if "/LUAD/" in p else 1 for p in paths])


def _predictions(path: Path, paths: list[str], labels: np.ndarray, pred: np.ndarray) -> Path:
    """predictions.parquet as run_evaluate writes it (rows shuffled: matching is by path)."""
    order = np.random.default_rng(1).permutation(len(paths))
    table = pd.DataFrame({"row": order, "path": np.array(paths)[order], "label": labels[order],
                          "pred": pred[order], "prob_LUAD": (pred[order] == 0).astype(float),
                          "prob_LUSC": (pred[order] == 1).astype(float)})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path)
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Encoder A right on 57 of 60 test tiles, B on 33; and a copy of A."""
    paths, labels = _test_tiles()
    wrong_a = np.zeros(len(labels), bool)
    wrong_a[[3, 30, 45]] = True
    wrong_b = np.random.default_rng(0).permutation(len(labels)) < 27
    a = _predictions(tmp_path / "a.parquet", paths, labels, np.where(wrong_a, 1 - labels, labels))
    b = _predictions(tmp_path / "b.parquet", paths, labels, np.where(wrong_b, 1 - labels, labels))
    same = _predictions(tmp_path / "c.parquet", paths, labels, np.where(wrong_a, 1 - labels,
                                                                         labels))  # fmt: skip
    return a, b, same


def _run(a: Path, b: Path, out: Path, **kw) -> dict:
    args = {"task": "tcga_luadlusc_demo", "protocol": "linear", "encoder_a": "a",
            "encoder_b": "b", "metric": "balanced_accuracy", "n_permutations": 200,
            "seed": 0} | kw  # fmt: skip
    run_compare_encoders(a, b, out, **args)
    return json.loads(out.read_text())


def test_run_compare_encoders_better_encoder_wins(pair: tuple, tmp_path: Path) -> None:
    """A clearly better encoder gives a positive difference and the smallest p possible."""
    a, b, _ = pair
    record = _run(a, b, tmp_path / "a__vs__b.json")
    assert record["difference"] > 0.3
    assert record["p_value"] == pytest.approx(1 / 201)
    assert record["n_test"] == 60
    assert set(record["inputs"]) == {str(a), str(b)}
    assert _run(b, a, tmp_path / "b__vs__a.json")["difference"] == pytest.approx(
        -record["difference"]
    )


def test_run_compare_encoders_identical_predictions(pair: tuple, tmp_path: Path) -> None:
    """The same predictions differ by 0 with p = 1; a rerun writes the same bytes."""
    a, _, same = pair
    record = _run(a, same, tmp_path / "x.json")
    assert record["difference"] == 0
    assert record["p_value"] == 1
    first = (tmp_path / "x.json").read_bytes()
    _run(a, same, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_bytes() == first


@pytest.mark.parametrize(("kw", "match"), [
    ({"protocol": "fewshot"}, "no per-sample predictions"),
    ({"n_permutations": 0}, "evaluate.compare.n_permutations"),
])  # fmt: skip
def test_run_compare_encoders_refuses(pair: tuple, tmp_path: Path, kw: dict, match: str) -> None:
    """Protocols without comparable predictions and zero permutations are refused by name."""
    a, b, _ = pair
    with pytest.raises(ConfigError, match=match):
        _run(a, b, tmp_path / "x.json", **kw)


def test_comparison_table_sorted_and_checked(pair: tuple, tmp_path: Path) -> None:
    """Records become sorted rows; a record missing fields names the file and the rule."""
    a, b, _ = pair
    second = _run(a, b, tmp_path / "knn.json", protocol="knn")
    first = _run(a, b, tmp_path / "linear.json")
    table = comparison_table([tmp_path / "linear.json", tmp_path / "knn.json"])
    assert table["protocol"].tolist() == ["knn", "linear"]
    assert table["p_value"].tolist() == [second["p_value"], first["p_value"]]
    (tmp_path / "bad.json").write_text(json.dumps({"task": "t"}))
    with pytest.raises(ConfigError, match=r"bad\.json lacks .*compare_encoders"):
        comparison_table([tmp_path / "bad.json"])


def test_comparison_paths_pairs_once_and_skips_protocols() -> None:
    """Three encoders give three ordered pairs per comparable protocol; fewshot gives none."""
    paths = comparison_paths("res", {"t": ["linear", "fewshot", "retrieval"]}, ["c", "a", "b"])
    assert paths == [f"res/eval/compare/t/linear/{p}.json"
                     for p in ("a__vs__b", "a__vs__c", "b__vs__c")]  # fmt: skip
