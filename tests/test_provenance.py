"""Shared writers: parquet and JSON outputs are atomic and byte-stable."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unipipe.provenance import write_parquet


@pytest.mark.parametrize("as_arrow", [False, True])
def test_write_parquet_is_byte_stable_and_drops_pandas_metadata(tmp_path, as_arrow):
    """Equal tables give equal bytes, the index is not stored, and the temp file is gone."""
    frame = pd.DataFrame({"x": [256, 512], "y": [0, 256], "keep": [True, False]}, index=[7, 9])
    table = pa.Table.from_pandas(frame, preserve_index=False) if as_arrow else frame
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_parquet(table, a)
    write_parquet(table, b)
    assert a.read_bytes() == b.read_bytes()
    stored = pq.read_table(a)
    assert stored.schema.metadata is None
    assert stored.column_names == ["x", "y", "keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]
