"""Parquet reading through pyarrow.dataset: projection, filter pushdown, hive-partitioned folders."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import count_rows, iter_table_batches


def _events(n):
    ts = np.datetime64("2024-01-01", "us") + np.arange(n) * np.timedelta64(1, "h")
    return pa.table({"customer_id": [f"c{i % 7}" for i in range(n)], "timestamp": pa.array(ts, pa.timestamp("us")),
                     "amount": np.arange(n, dtype=np.float64)})


def test_partitioned_folder_reads_in_order_with_partition_columns(tmp_path):
    table = _events(500).append_column("year", pa.array(["2024"] * 250 + ["2025"] * 250))
    pq.write_to_dataset(table, tmp_path / "events", partition_cols=["year"])
    (tmp_path / "events" / ".hidden.parquet").write_bytes(b"not parquet")  # ignored
    got = pa.Table.from_batches(list(iter_table_batches(tmp_path / "events", ["amount", "year"], batch_size=64)))
    assert got.column_names == ["amount", "year"]
    assert got["amount"].to_pylist() == list(range(500))  # file order, deterministic
    assert set(got["year"].to_pylist()) == {2024, 2025}  # partition values, typed by inference
    assert count_rows(tmp_path / "events") == 500


def test_filter_is_pushed_down_and_projection_keeps_only_asked_columns(tmp_path):
    path = tmp_path / "events.parquet"
    pq.write_table(_events(1000), path, row_group_size=100)
    limit = pa.scalar(np.datetime64("2024-01-10", "us"), pa.timestamp("us"))
    batches = list(iter_table_batches(path, ["timestamp", "amount"], filter=pc.field("timestamp") < limit))
    got = pa.Table.from_batches(batches)
    assert got.column_names == ["timestamp", "amount"]
    assert got.num_rows == 9 * 24 and got["amount"].to_pylist() == list(range(9 * 24))


def test_a_folder_without_parquet_files_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="holds no .parquet files"):
        list(iter_table_batches(tmp_path / "empty", ["a"]))
