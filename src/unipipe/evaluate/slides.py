"""Stage entry point for slide tasks: ABMIL on feature bags listed in a slide manifest."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import pyarrow as pa

from unipipe.config import build_params
from unipipe.errors import ConfigError
from unipipe.evaluate.abmil import AbmilParams, abmil_sweep_protocol, fit_abmil, predict_abmil
from unipipe.evaluate.features import read_bag
from unipipe.evaluate.metrics import compute_metrics
from unipipe.evaluate.prototypes import MiSimpleShotParams, fit_prototypes, predict_prototypes
from unipipe.evaluate.run import DEFAULT_METRICS, BootstrapParams, _finite_or_none
from unipipe.evaluate.slide_fewshot import SlideFewShotParams, slide_fewshot_protocol
from unipipe.evaluate.slide_manifest import MANIFEST_NAME, read_slide_manifest, split_names
from unipipe.provenance import write_json, write_parquet, write_sidecar

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "SLIDE_PARAM_SECTIONS",
    "SLIDE_PROTOCOLS",
    "SLIDE_PROTOCOL_SECTIONS",
    "SlideSplitParams",
    "bag_size_l0",
    "read_slide_manifest",
    "run_evaluate_slides",
]


@dataclass(frozen=True, kw_only=True)
class SlideSplitParams:
    """Validation hold-out (config key ``evaluate.slides``).

    Attributes:
        val_fraction: share of each class's train slides held out (seeded) for early
            stopping when the manifest has no ``val`` split.
    """

    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ConfigError(
                f"evaluate.slides.val_fraction must be in (0, 1): {self.val_fraction}"
            )


# Sections of evaluate.params the slide stage reads -> the dataclass each is built into;
# the workflow builds them at start-up so a typo fails before any slide is embedded.
SLIDE_PARAM_SECTIONS = {
    "abmil": AbmilParams,
    "slide_fewshot": SlideFewShotParams,
    "mi_simpleshot": MiSimpleShotParams,
    "slides": SlideSplitParams,
}


def _hold_out(
    labels: np.ndarray, fraction: float, seed: int, cases: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of train slides moved to validation: >= 1 case per class with >= 2 cases.

    Whole cases move (``cases``: case id per slide, "" = the slide is its own case), so no
    patient has slides on both sides; a case counts under the label of its first slide.
    """
    rng = np.random.default_rng(seed)
    if cases is None:
        cases = np.array([""] * len(labels), dtype=object)
    units = np.array([c if c else f"\0slide{i}" for i, c in enumerate(cases)], dtype=object)
    names, first = np.unique(units, return_index=True)
    # Cases in order of first appearance: without case ids the picks equal per-slide ones.
    order = np.argsort(first)
    names, first = names[order], first[order]
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        pool = names[labels[first] == c]
        n_val = max(1, round(fraction * len(pool))) if len(pool) >= 2 else 0
        val[np.isin(units, rng.choice(pool, size=n_val, replace=False))] = True
    return val


@dataclass(frozen=True, kw_only=True)
class _SlideData:
    """Bags and labels of the train / val / test slides of one task."""

    train: list[np.ndarray]
    y_train: np.ndarray
    val: list[np.ndarray]
    y_val: np.ndarray
    test: list[np.ndarray]
    n_classes: int
    # Test labels, read only by protocols that score inside (few-shot curves); the fitted
    # models never see them.
    y_test: np.ndarray | None = None
    # Class names by index, for error messages.
    class_names: tuple[str, ...] | None = None


def _abmil(data: _SlideData, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, dict]:
    """ABMIL with early stopping on the validation slides."""
    p = build_params(AbmilParams, params.get("abmil"), "evaluate.abmil")
    model, history = fit_abmil(data.train, data.y_train, data.val, data.y_val,
                               n_classes=data.n_classes, params=p, seed=seed)  # fmt: skip
    probs, attention = predict_abmil(model, data.test)
    extra = {"best_epoch": history.best_epoch, "epochs_run": len(history.val_loss)}
    return probs, {"params": p, "extra": extra, "heatmaps": attention}


def _mi_simpleshot(
    data: _SlideData, params: Mapping[str, Any], seed: int
) -> tuple[np.ndarray, dict]:
    """Prototypes from train + val slides (no early stopping to use them for)."""
    del seed
    p = build_params(MiSimpleShotParams, params.get("mi_simpleshot"), "evaluate.mi_simpleshot")
    model = fit_prototypes([*data.train, *data.val], np.concatenate([data.y_train, data.y_val]),
                           n_classes=data.n_classes, class_names=data.class_names)  # fmt: skip
    probs, similarity = predict_prototypes(model, data.test, p)
    return probs, {"params": p, "extra": {"top_k": p.top_k}, "heatmaps": similarity}


# Slide protocol name (tasks.yaml) -> fit-and-predict function giving (S_test, K) probs.
# abmil is CLAM's reference fit (lr 1e-4) that UNI quotes; abmil_sweep is UNI's later
# protocol (lr in evaluate.abmil.lrs, picked on validation); abmil_fewshot the K-slide curve.
SLIDE_PROTOCOLS = {
    "abmil": _abmil,
    "abmil_sweep": abmil_sweep_protocol,
    "abmil_fewshot": slide_fewshot_protocol,
    "mi_simpleshot": _mi_simpleshot,
}
# evaluate.params sections each slide protocol reads (a change elsewhere reruns nothing).
SLIDE_PROTOCOL_SECTIONS = {
    "abmil": ("abmil",),
    "abmil_sweep": ("abmil",),
    "abmil_fewshot": ("slide_fewshot", "abmil"),
    "mi_simpleshot": ("mi_simpleshot",),
}


def bag_size_l0(path: str | os.PathLike[str]) -> int:
    """Patch side in level-0 px recorded in a bag, or -1 when the file does not say.

    Read from the ``size_l0`` attribute unipipe writes, else TRIDENT's ``patch_size_level0``
    on ``coords``, else CLAM's ``patch_size`` on ``coords`` when ``patch_level`` is 0.
    """
    with h5py.File(path, "r") as h5:
        if "size_l0" in h5.attrs:
            return int(h5.attrs["size_l0"])
        coords = h5["coords"].attrs if "coords" in h5 else {}
        if "patch_size_level0" in coords:
            return int(coords["patch_size_level0"])
        if "patch_size" in coords and int(coords.get("patch_level", -1)) == 0:
            return int(coords["patch_size"])
    return -1


def _write_heatmaps(
    path: str | os.PathLike[str],
    slide_ids: list[str],
    bags: list[Any],
    scores: list[np.ndarray],
    sizes_l0: list[int],
) -> None:
    """One row per test patch: slide_id, patch index, level-0 x, y, side size_l0 and score."""
    ids, patch, xs, ys, sides, values = [], [], [], [], [], []
    for slide_id, bag, score, side in zip(slide_ids, bags, scores, sizes_l0, strict=True):
        n = len(score)
        coords = bag.coords if bag.coords is not None else np.full((n, 2), -1, np.int64)
        ids += [slide_id] * n
        patch.append(np.arange(n))
        xs.append(coords[:, 0])
        ys.append(coords[:, 1])
        sides.append(np.full(n, side, np.int64))
        values.append(np.asarray(score, dtype=np.float64))
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    table = pa.table({"slide_id": pa.array(ids, pa.string()), "patch": cat(patch, np.int64),
                      "x": cat(xs, np.int64), "y": cat(ys, np.int64),
                      "size_l0": cat(sides, np.int64), "score": cat(values, np.float64)})  # fmt: skip
    write_parquet(table, path)


def _cohort_scores(
    cohorts: np.ndarray, y: np.ndarray, pred: np.ndarray, probs: np.ndarray,
    names: list[str], boot: BootstrapParams, seed: int,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Metrics with bootstrap intervals per test cohort (e.g. TCGA held-out vs CPTAC)."""
    out = {}
    for cohort in sorted(set(cohorts)):
        rows = cohorts == cohort
        scores = compute_metrics(y[rows], pred[rows], probs[rows], names=names,
                                 n_resamples=boot.n_resamples, ci=boot.ci, seed=seed)  # fmt: skip
        out[cohort] = {"n_test": int(rows.sum())}
        for name, s in scores.items():
            out[cohort][name] = _finite_or_none(s["value"])
            out[cohort][f"{name}_ci_low"] = _finite_or_none(s["ci_low"])
            out[cohort][f"{name}_ci_high"] = _finite_or_none(s["ci_high"])
    return out


def _resolve_bags(table: Any, bags: Mapping[str, Any], manifest_csv: Any) -> list[str]:
    """Every row's bag: its features_h5, or for a slide_path row the bag embedded from it."""
    lacking = [s for s, h5 in zip(table["slide_id"], table["features_h5"], strict=True)
               if not h5 and s not in bags]  # fmt: skip
    if lacking:
        raise ConfigError(
            f"{os.fspath(manifest_csv)}: slide(s) {lacking[:5]} have a slide_path but no bag; "
            "embed them first (the workflow's embed_slide rule) and pass them as `bags`"
        )
    return [h5 or os.fspath(bags[s]) for s, h5 in zip(table["slide_id"], table["features_h5"],
                                                       strict=True)]  # fmt: skip


def _check_bags(table: Any, loaded: list[Any], manifest_csv: Any) -> None:
    """Every bag has patches, and all share one feature width (one encoder's output)."""
    csv = os.fspath(manifest_csv)
    first = None
    for slide_id, path, bag in zip(table["slide_id"], table["features_h5"], loaded, strict=True):
        n, dim = bag.features.shape
        if n == 0:
            raise ConfigError(
                f"{path} (slide {slide_id!r} of {csv}) has 0 patches: re-embed the slide (its "
                "tissue may all have been filtered out) or drop the row"
            )
        if first is None:
            first = (slide_id, path, dim)
        elif dim != first[2]:
            raise ConfigError(
                f"{path} (slide {slide_id!r} of {csv}) has features of shape {bag.features.shape}"
                f"; expected (N, {first[2]}) like {first[1]} (slide {first[0]!r}): every bag "
                "of a task must come from the same encoder, so re-extract the odd one"
            )


def run_evaluate_slides(
    manifest_csv: str | os.PathLike[str],
    *,
    task: Mapping[str, Any],
    params: Mapping[str, Any] | None,
    seed: int,
    metrics_json: str | os.PathLike[str],
    predictions_parquet: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
    encoder_name: str = "",
    protocol: str = "abmil",
    heatmaps_parquet: str | os.PathLike[str] | None = None,
    bags: Mapping[str, str | os.PathLike[str]] | None = None,
) -> None:
    """Train ABMIL on the train slides (early stopping on val), score the test slides.

    Args:
        manifest_csv: the task's slides.csv (one row per slide and its feature bag h5).
        task: the task entry (``id``, ``classes``, ``split``, ``metrics``).
        params: the ``evaluate`` section: ``abmil``, ``slides``, ``bootstrap``.
        seed: seeds the hold-out, ABMIL and the bootstrap.
        metrics_json: same layout as run_evaluate's (protocol ``abmil``).
        predictions_parquet: slide_id, label, pred and prob_<class> per test slide.
        sidecar: provenance JSON.
        encoder_name: the encoder that produced the bags (recorded in metrics.json).
        protocol: a key of ``SLIDE_PROTOCOLS`` (``abmil`` or ``mi_simpleshot``).
        heatmaps_parquet: optional per-patch scores of the test slides: slide_id, patch,
            x, y (level 0, -1 when the bag has no coords), size_l0 (patch side in level-0
            px, -1 when the bag does not record it; see ``bag_size_l0``) and score (ABMIL
            attention, or MI-SimpleShot similarity to the predicted class's prototype).
        bags: slide_id -> the bag embedded from that row's slide_path (the workflow's
            results/embed/{encoder}/{task}/slides/{slide_id}.h5); rows with a features_h5
            use it, with ``{encoder}`` replaced by ``encoder_name``.

    Raises:
        ConfigError: a slide_path row has no entry in ``bags``; the manifest fails a check of
            ``read_slide_manifest`` against the task's classes and split (a label or split
            value the task does not use, a class without training slides, fewer than two
            test classes); or a bag is unusable (no patches, NaN or infinite features, not
            (N, D), or a feature width unlike the other bags').
    """
    params = dict(params or {})
    if protocol not in SLIDE_PROTOCOLS:
        raise ConfigError(f"slide protocol {protocol!r}; known: {sorted(SLIDE_PROTOCOLS)}")
    split_params = build_params(SlideSplitParams, params.get("slides"), "evaluate.slides")
    boot = build_params(BootstrapParams, params.get("bootstrap"), "evaluate.bootstrap")
    split = dict(task.get("split") or {})
    # Labels and split values the task does not use are refused here (they used to be
    # dropped silently), as the workflow already does at start-up.
    table = read_slide_manifest(manifest_csv, encoder=encoder_name or None,
                                classes=task.get("classes") or None, split=split)  # fmt: skip
    table["features_h5"] = _resolve_bags(table, bags or {}, manifest_csv)
    classes = list(task.get("classes") or sorted(table["label"].unique()))
    lookup = {c: i for i, c in enumerate(classes)}
    labels = table["label"].map(lookup).to_numpy()

    train_name, test_name = split_names(split)
    is_train = table["split"].eq(train_name).to_numpy()
    is_test = table["split"].eq(test_name).to_numpy()
    is_val = table["split"].eq("val").to_numpy()
    if not is_val.any():
        moved = np.zeros(len(table), dtype=bool)
        moved[is_train] = _hold_out(labels[is_train], split_params.val_fraction, seed,
                                    table["case_id"].to_numpy(object)[is_train])  # fmt: skip
        is_val, is_train = moved, is_train & ~moved
    loaded = [read_bag(p) for p in table["features_h5"]]
    _check_bags(table, loaded, manifest_csv)
    bags = [bag.features for bag in loaded]
    pick = lambda mask: [bags[i] for i in np.flatnonzero(mask)]  # noqa: E731
    logger.info("%s %s: %s train, %s val, %s test slides", protocol, task.get("id"), is_train.sum(),
                is_val.sum(), is_test.sum())  # fmt: skip

    data = _SlideData(train=pick(is_train), y_train=labels[is_train], val=pick(is_val),
                      y_val=labels[is_val], test=pick(is_test), n_classes=len(classes),
                      y_test=labels[is_test], class_names=tuple(classes))  # fmt: skip
    probs, fitted = SLIDE_PROTOCOLS[protocol](data, params, seed)
    pred = probs.argmax(axis=1)
    y_test = labels[is_test]
    names = list(task.get("metrics") or DEFAULT_METRICS)
    scores = compute_metrics(y_test, pred, probs, names=names, n_resamples=boot.n_resamples,
                             ci=boot.ci, seed=seed)  # fmt: skip

    record: dict[str, Any] = {
        "task": task.get("id"), "protocol": protocol, "encoder": encoder_name,
        "n_train": int(is_train.sum()), "n_val": int(is_val.sum()), "n_test": int(is_test.sum()),
        "n_classes": len(classes), "label_names": classes, "seed": seed, "img_size": None,
        "bootstrap": {"n_resamples": boot.n_resamples, "ci": boot.ci},
        "extra": fitted["extra"],
    }  # fmt: skip
    for name, s in scores.items():
        record[name] = _finite_or_none(s["value"])
        record[f"{name}_ci_low"] = _finite_or_none(s["ci_low"])
        record[f"{name}_ci_high"] = _finite_or_none(s["ci_high"])
    if (table["cohort"] != "").any():
        record["by_cohort"] = _cohort_scores(table["cohort"][is_test].astype(str).to_numpy(),
                                             y_test, pred, probs, names, boot, seed)  # fmt: skip
    write_json(metrics_json, record)

    columns = {
        "slide_id": pa.array(table["slide_id"][is_test].tolist()),
        "label": pa.array(y_test.astype(np.int64)),
        "pred": pa.array(pred.astype(np.int64)),
    }
    for c, name in enumerate(classes):
        columns[f"prob_{name}"] = pa.array(probs[:, c])
    write_parquet(pa.table(columns), predictions_parquet)
    if heatmaps_parquet is not None:
        test_rows = np.flatnonzero(is_test)
        _write_heatmaps(heatmaps_parquet, [str(table["slide_id"][i]) for i in test_rows],
                        [loaded[i] for i in test_rows], fitted["heatmaps"],
                        [bag_size_l0(table["features_h5"][i]) for i in test_rows])  # fmt: skip
    write_sidecar(sidecar, stage="evaluate_slides", params={"protocol": protocol, "protocol_params": fitted["params"], "slides": split_params,
                  "bootstrap": boot, "seed": seed, "task": dict(task)},
                  inputs=[manifest_csv, *table["features_h5"]])  # fmt: skip
