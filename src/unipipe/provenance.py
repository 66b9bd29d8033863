"""Atomic output writing and the per-stage sidecar JSON (parameters, versions, input checksums)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_path",
    "file_sha256",
    "library_versions",
    "path_sha256",
    "to_jsonable",
    "write_json",
    "write_parquet",
    "write_sidecar",
]

# Libraries whose versions change results; recorded in every sidecar.
_TRACKED_PACKAGES = (
    "unipipe",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "pillow",
    "opencv-python-headless",
    "scikit-learn",
    "openslide-python",
    "openslide-bin",
    "tifffile",
    "imagecodecs",
    "pydicom",
    "zarr",
    "numcodecs",
    "h5py",
    "safetensors",
    "torch",
    "torchvision",
    "timm",
    "lightning",
)

_CHUNK_BYTES = 1 << 22


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``final`` only if the block succeeds.

    Works for files and directories (a Zarr store is a directory). Nothing is left at
    ``final`` when the block raises, so a partial output never looks complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def to_jsonable(value: Any) -> Any:
    """Turn dataclasses, paths, numpy scalars and tuples into plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as sorted, indented JSON, atomically; byte-identical for equal input."""
    text = json.dumps(to_jsonable(payload), indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(frame: Any, path: str | os.PathLike[str]) -> None:
    """Write a DataFrame or pyarrow Table as parquet, atomically and byte-stable.

    Schema metadata (pandas' index description) and column statistics are left out, so
    equal tables give equal bytes on rerun.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = (
        frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    )
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def path_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, or of a directory's files (relative names and bytes, sorted)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(child.relative_to(path).as_posix().encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def write_sidecar(
    path: str | os.PathLike[str],
    *,
    stage: str,
    params: Any,
    inputs: Iterable[str | os.PathLike[str]] = (),
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Record what a stage ran with: its parameters, library versions and input checksums.

    The sidecar holds no timestamps or host names, so rerunning a deterministic stage on
    the same inputs reproduces it byte for byte.
    """
    record = {
        "stage": stage,
        "params": to_jsonable(params),
        "versions": library_versions(),
        "inputs": {os.fspath(p): path_sha256(p) for p in inputs},
    }
    if extra:
        record["extra"] = to_jsonable(extra)
    write_json(path, record)
    logger.debug("wrote sidecar %s", path)
