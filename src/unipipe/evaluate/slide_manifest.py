"""slides.csv of the slide_bags adapter: each slide's label, split, case and where its bag is."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODER_PLACEHOLDER",
    "MANIFEST_NAME",
    "read_slide_manifest",
    "split_names",
    "task_manifest_path",
]

# The slide_bags adapter reads {task path}/slides.csv.
MANIFEST_NAME = "slides.csv"
# Replaced by the encoder's config name in features_h5, so each encoder reads its own bags.
ENCODER_PLACEHOLDER = "{encoder}"
_REQUIRED = ("slide_id", "label", "split")
_SOURCES = ("features_h5", "slide_path")
_OPTIONAL = ("cohort", "case_id", "mpp")
# Slide ids name output files (results/embed/.../slides/{slide_id}.h5).
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def task_manifest_path(
    tasks_yaml: str | os.PathLike[str], task_id: str, *, data_root: str | os.PathLike[str] = "."
) -> Path:
    """The slides.csv of one slide task of a task registry (for jobs given only the task id).

    Args:
        tasks_yaml: the task registry (config key ``tasks``).
        task_id: the task.
        data_root: config key ``evaluate.data_root``, substituted into task paths.

    Raises:
        ConfigError: the registry has no such task.
    """
    from unipipe.evaluate.tasks import load_task_registry

    for task in load_task_registry(tasks_yaml, data_root):
        if task.id == task_id:
            return Path(task.path) / MANIFEST_NAME
    raise ConfigError(f"{os.fspath(tasks_yaml)} has no task {task_id!r}")


def _where(csv: str, row: int, slide_id: str) -> str:
    """``slides.csv line 5 (slide 'x')``: CSV line numbers count the header as line 1."""
    return f"{csv} line {row + 2} (slide {slide_id!r})"


def _check_columns(table: pd.DataFrame, csv: str) -> None:
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise ConfigError(
            f"{csv} lacks column(s) {missing}; a slide_bags manifest needs slide_id, label, "
            "split and, per row, features_h5 (a feature bag) or slide_path (a WSI)"
        )
    if not any(c in table.columns for c in _SOURCES):
        raise ConfigError(
            f"{csv} has neither a features_h5 nor a slide_path column; add one of them "
            "(features_h5: a prebuilt CLAM/TRIDENT bag, slide_path: a WSI the workflow embeds)"
        )


def _check_ids(table: pd.DataFrame, csv: str) -> None:
    for row, rec in table.iterrows():
        for column in _REQUIRED:
            if not rec[column]:
                raise ConfigError(f"{_where(csv, row, rec['slide_id'])}: empty {column}")
        if not _SAFE_ID.match(rec["slide_id"]):
            raise ConfigError(
                f"{_where(csv, row, rec['slide_id'])}: slide_id may hold only letters, digits, "
                "'.', '_' and '-' (it names output files); rename it"
            )
    duplicated = sorted(set(table["slide_id"][table["slide_id"].duplicated()]))
    if duplicated:
        raise ConfigError(f"{csv}: slide_id(s) {duplicated} appear more than once")


def _check_sources(table: pd.DataFrame, csv: str, encoder: str | None, root: Path) -> None:
    """Exactly one of features_h5 / slide_path per row, and the file it names exists."""
    for row, rec in table.iterrows():
        where = _where(csv, row, rec["slide_id"])
        bag, wsi = rec["features_h5"], rec["slide_path"]
        if bool(bag) == bool(wsi):
            raise ConfigError(
                f"{where}: give either features_h5 (a prebuilt bag) or slide_path (a WSI to "
                f"embed), {'not both' if bag else 'one of them'}"
            )
        if wsi and not (root / wsi).exists():
            raise ConfigError(f"{where}: slide_path {root / wsi} does not exist; fix the path")
        if bag and (encoder is not None or ENCODER_PLACEHOLDER not in bag):
            resolved = root / bag.replace(ENCODER_PLACEHOLDER, encoder or "")
            if not resolved.is_file():
                raise ConfigError(
                    f"{where}: features_h5 {resolved} does not exist"
                    + (f" for encoder {encoder!r}" if ENCODER_PLACEHOLDER in bag else "")
                    + "; fix the path or extract that bag"
                )


def _parse_mpp(table: pd.DataFrame, csv: str) -> np.ndarray:
    values = np.full(len(table), np.nan)
    for row, rec in table.iterrows():
        if not rec["mpp"]:
            continue
        try:
            values[row] = float(rec["mpp"])
        except ValueError:
            values[row] = np.nan
        if not values[row] > 0:
            raise ConfigError(
                f"{_where(csv, row, rec['slide_id'])}: mpp {rec['mpp']!r} is not a positive "
                "number of µm per level-0 pixel"
            )
    return values


def _check_cases(table: pd.DataFrame, csv: str) -> None:
    """A patient's slides must share one split, else test slides leak into training."""
    cased = table[table["case_id"] != ""]
    for case, rows in cased.groupby("case_id", sort=True):
        splits = sorted(set(rows["split"]))
        if len(splits) > 1:
            raise ConfigError(
                f"{csv}: case {case!r} has slides in splits {splits} "
                f"({', '.join(rows['slide_id'])}); slide tasks split by patient, so put all "
                "of a case's slides in one split"
            )


def _lines(rows: pd.DataFrame) -> str:
    """``3 slides: line(s) 2, 5, 9``: CSV lines of ``rows``, at most 5 listed."""
    lines = [str(r + 2) for r in rows.index[:5]]
    more = ", ..." if len(rows) > 5 else ""
    return f"{len(rows)} slide{'s' if len(rows) != 1 else ''}: line(s) {', '.join(lines)}{more}"


def split_names(split: Mapping[str, Any] | None) -> tuple[str, str]:
    """The (train, test) split values of a task's ``split`` entry (default train, test)."""
    split = split or {}
    return str(split.get("train", "train")), str(split.get("test", "test"))


def _check_labels(table: pd.DataFrame, csv: str, classes: Sequence[str]) -> None:
    """Every label is one of the task's classes; a typo would otherwise drop its rows."""
    unknown = table[~table["label"].isin(list(classes))]
    if len(unknown):
        found = "; ".join(f"{label!r} ({_lines(rows)})"
                          for label, rows in unknown.groupby("label", sort=True))  # fmt: skip
        raise ConfigError(
            f"{csv}: label(s) not among the task's classes {list(classes)}: {found}; fix the "
            "label column (names are case-sensitive) or add the class to the task's `classes` "
            "in the task registry"
        )


def _check_splits(table: pd.DataFrame, csv: str, split: Mapping[str, Any] | None) -> None:
    """Every split value is the task's train or test name or ``val``."""
    accepted = [*split_names(split), "val"]
    unknown = table[~table["split"].isin(accepted)]
    if len(unknown):
        found = "; ".join(f"{value!r} ({_lines(rows)})"
                          for value, rows in unknown.groupby("split", sort=True))  # fmt: skip
        raise ConfigError(
            f"{csv}: split value(s) the task does not use: {found}; accepted (case-sensitive): "
            f"{accepted} (the train and test names come from the task's `split` entry)"
        )


def _check_class_coverage(
    table: pd.DataFrame, csv: str, classes: Sequence[str], split: Mapping[str, Any] | None
) -> None:
    """Each class has a training slide, and the test slides hold at least two classes."""
    train, test = split_names(split)
    trained = set(table["label"][table["split"] == train])
    for name in classes:
        if name not in trained:
            elsewhere = sorted(set(table["split"][table["label"] == name]))
            raise ConfigError(
                f"{csv}: class {name!r} has no slide in the {train!r} split"
                + (f" (only in {elsewhere})" if elsewhere else " (no slide at all)")
                + f"; the slide protocols learn every class from training slides: move a case "
                f"of class {name!r} to {train!r}, or drop {name!r} from the task's `classes`"
            )
    tested = sorted(set(table["label"][table["split"] == test]))
    if len(tested) < 2:
        present = f"only class {tested[0]!r}" if tested else "no slide"
        raise ConfigError(
            f"{csv}: the {test!r} split holds {present}; balanced accuracy and AUROC need test "
            f"slides of at least two classes (a one-class test set is no classification "
            f"benchmark): put cases of another class of {list(classes)} in {test!r}"
        )


def read_slide_manifest(
    path: str | os.PathLike[str],
    *,
    encoder: str | None = None,
    classes: Sequence[str] | None = None,
    split: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Read and check a slide_bags manifest (slides.csv).

    Columns: slide_id, label (class name), split; per row either features_h5 (a prebuilt
    CLAM/TRIDENT bag, relative to the CSV; ``{encoder}`` in it is replaced by the encoder's
    name) or slide_path (a WSI relative to the CSV, embedded by the workflow), with optional
    mpp (level-0 µm/px of that WSI); optional cohort (per-cohort test metrics) and case_id
    (patient: all of a case's slides must be in one split).

    Args:
        path: the CSV.
        encoder: the encoder whose bags are meant; None leaves ``{encoder}`` in place and
            skips the existence check of those bags.
        classes: the task's class names; when given, every label must be one of them.
        split: the task's ``split`` entry (its ``train`` and ``test`` names, default
            ``train`` and ``test``); when given, every split value must be one of those or
            ``val``, every class (of ``classes``, else of the labels) needs a training slide
            and the test slides need at least two classes. None skips these checks.

    Returns:
        One row per slide, sorted by slide_id: slide_id, label, split, features_h5 and
        slide_path (absolute, "" where the row has none), mpp (NaN where not given), cohort
        and case_id ("" where not given).

    Raises:
        ConfigError: naming the CSV and line for a missing column, a row with neither or
            both sources, a missing file, a bad mpp, a repeated slide_id, a case found in
            more than one split, a label outside ``classes``, a split value outside
            ``split``, a class without a training slide, or fewer than two test classes.
    """
    csv = os.fspath(path)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    _check_columns(table, csv)
    for column in (*_SOURCES, *_OPTIONAL):
        if column not in table.columns:
            table[column] = ""
    table = table.apply(lambda col: col.str.strip() if col.dtype == object else col)
    root = Path(path).resolve().parent

    _check_ids(table, csv)
    _check_sources(table, csv, encoder, root)
    table["mpp"] = _parse_mpp(table, csv)
    _check_cases(table, csv)
    if classes is not None:
        _check_labels(table, csv, classes)
    if split is not None:
        _check_splits(table, csv, split)
        known = list(classes) if classes is not None else sorted(set(table["label"]))
        _check_class_coverage(table, csv, known, split)

    bags = table["features_h5"].str.replace(ENCODER_PLACEHOLDER, encoder or ENCODER_PLACEHOLDER)
    table["features_h5"] = [str(root / b) if b else "" for b in bags]
    table["slide_path"] = [str(root / p) if p else "" for p in table["slide_path"]]
    return table.sort_values("slide_id", kind="stable").reset_index(drop=True)
