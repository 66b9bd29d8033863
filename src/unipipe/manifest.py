"""The slide manifest (config/slides.tsv): read, checked row by row, errors naming file and row."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from pathlib import Path

import pandas as pd

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["KNOWN_COLUMNS", "MAX_MPP", "read_manifest"]

KNOWN_COLUMNS = ("slide_id", "path", "mpp", "case_id", "tissue_type")
REQUIRED_COLUMNS = ("slide_id", "path")
# Level-0 resolution of brightfield scanners lies between ~0.1 (80x) and ~2 µm/px (5x);
# a larger number is almost always an objective power typed into the mpp column.
MAX_MPP = 16.0
_SLIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a tab-separated slide manifest; every value is text except ``mpp``.

    Args:
        path: the manifest; columns slide_id and path are required, mpp, case_id and
            tissue_type optional, other columns are kept and warned about.

    Returns:
        One row per slide, indexed by slide_id; ``mpp`` is a float or NaN (use the file's
        metadata).

    Raises:
        ConfigError: naming the file, the row's slide_id and the fix.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"slide manifest {path} {what}; set `slides:` in the config")
    table = _read_table(path)
    _check_columns(path, table)
    table = table[(table != "").any(axis=1)].copy()
    if table.empty:
        raise ConfigError(f"slide manifest {path} lists no slides; add one row per slide")

    table["mpp"] = [_parse_mpp(path, sid, v) for sid, v in _column(table, "mpp")]
    for sid, slide_path in _column(table, "path"):
        if not _SLIDE_ID.match(sid):
            raise ConfigError(
                f"{path}: slide_id {sid!r} may hold only letters, digits, '.', '_' and '-', "
                "and must start with a letter or digit (it names output files)"
            )
        if not slide_path.strip():
            raise ConfigError(f"{path}: slide {sid!r} has an empty path column")
    _check_unique(path, table)
    return table.set_index("slide_id", drop=False)


def _read_table(path: Path) -> pd.DataFrame:
    """The manifest's cells as text, one row per non-blank, non-comment line.

    Only a line whose first character is ``#`` is a comment: a ``#`` inside a path or an
    id is data. Every value stays text, so case ids such as 001 keep their zeros and NA
    stays the string "NA". A row may leave out trailing empty cells but not add cells.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"slide manifest {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
            "save it as UTF-8 tab-separated text"
        ) from None
    # Comment lines become blank lines, so the reader's line numbers stay the file's.
    lines = ["" if line.startswith("#") else line for line in text.splitlines()]
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter="\t")
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise ConfigError(
            f"slide manifest {path} is empty; its first line must be the tab-separated "
            f"header (at least {', '.join(REQUIRED_COLUMNS)}), then one row per slide"
        )

    header = rows[0][1]
    width = len(header)
    body = []
    for line, row in rows[1:]:
        if len(row) > width and any(cell.strip() for cell in row[width:]):
            raise ConfigError(
                f"{path}, line {line}: {len(row)} tab-separated fields, but the header has "
                f"{width} ({', '.join(header)}); remove the extra fields or name their "
                "column in the header"
            )
        body.append((row + [""] * width)[:width])
    return pd.DataFrame(body, columns=header, dtype=str)


def _column(table: pd.DataFrame, name: str) -> list[tuple[str, str]]:
    values = table[name] if name in table else [""] * len(table)
    return list(zip(table["slide_id"], values, strict=True))


def _check_columns(path: Path, table: pd.DataFrame) -> None:
    columns = list(table.columns)
    if len(columns) == 1 and ("," in columns[0] or ";" in columns[0]):
        raise ConfigError(
            f"{path} is not tab-separated (its header is {columns[0]!r}); "
            "separate the columns with tabs"
        )
    for column in columns:
        near = [k for k in KNOWN_COLUMNS if column != k and column.strip().lower() == k]
        if near:
            raise ConfigError(
                f"{path}: column {column!r} looks like {near[0]!r}; rename it exactly "
                f"(known columns: {', '.join(KNOWN_COLUMNS)})"
            )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ConfigError(f"{path}: the header names column(s) {repeated} twice; keep one of each")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ConfigError(
            f"{path} has no {', '.join(missing)} column; the header must name at least "
            f"{', '.join(REQUIRED_COLUMNS)} (tab-separated)"
        )
    extra = [c for c in columns if c not in KNOWN_COLUMNS]
    if extra:
        logger.warning("%s: columns %s are not used by unipipe and kept as they are", path, extra)


def _parse_mpp(path: Path, slide_id: str, text: str) -> float:
    if not text.strip():
        return math.nan
    try:
        mpp = float(text)
    except ValueError:
        raise ConfigError(
            f"{path}: slide {slide_id!r} has mpp {text!r}, not a number; give level-0 "
            "microns per pixel (e.g. 0.25 for a 40x scan, 0.5 for 20x) or leave it empty"
        ) from None
    if not 0 < mpp <= MAX_MPP:
        raise ConfigError(
            f"{path}: slide {slide_id!r} has mpp {mpp:g}; mpp is level-0 microns per pixel "
            f"(0 < mpp <= {MAX_MPP:g}, e.g. 0.25 for 40x, 0.5 for 20x), not the objective power"
        )
    return mpp


def _check_unique(path: Path, table: pd.DataFrame) -> None:
    repeated = sorted(set(table["slide_id"][table["slide_id"].duplicated()]))
    if repeated:
        raise ConfigError(f"{path}: slide_id must be unique, repeated: {repeated}")
    resolved = table["path"].map(lambda p: os.path.realpath(p))
    for real in sorted(set(resolved[resolved.duplicated()])):
        ids = table["slide_id"][resolved == real].tolist()
        logger.warning(
            "%s: slides %s are the same file %s; its patches count twice", path, ids, real
        )
