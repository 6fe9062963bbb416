"""Atomic, streaming reads and writes of Parquet, CSV, JSON and numpy artifacts.

Every write goes to a temporary file in the destination folder and is renamed into place, so a
job killed half-way never leaves a truncated artifact that a later job would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gpuseg.runtime.errors import UserInputError

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; artifacts get the usual permissions (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy scalars and arrays are converted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default, sort_keys=False) + "\n")
    return Path(path)


def read_json(path: PathLike) -> Any:
    """Read a JSON artifact."""
    return json.loads(Path(path).read_text())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_parquet(path: PathLike, table: pa.Table, *, compression: str = "zstd") -> Path:
    """Atomically write an Arrow table as Parquet."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)
    return Path(path)


def write_numpy(path: PathLike, array: np.ndarray) -> Path:
    """Atomically write a ``.npy`` file (memory-mappable with ``np.load(mmap_mode='r')``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
    return Path(path)


class ParquetStreamWriter:
    """Write record batches to one Parquet file, atomically, as they are produced.

    Use as a context manager; the file appears under its final name only on a clean exit.

    Parameters
    ----------
    path : path-like
        Final file name.
    schema : pyarrow.Schema
        Schema of every batch written.
    """

    def __init__(self, path: PathLike, schema: pa.Schema, *, compression: str = "zstd"):
        self.path = Path(path)
        self.schema = schema
        self.compression = compression
        self.rows = 0
        self._ctx = None
        self._writer = None

    def __enter__(self) -> ParquetStreamWriter:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(tmp, self.schema, compression=self.compression)
        return self

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append a table or record batch (cast to the writer's schema)."""
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if data.num_rows == 0:
            return
        self._writer.write_table(data.select(self.schema.names).cast(self.schema))
        self.rows += data.num_rows

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.close()
        self._ctx.__exit__(exc_type, exc, tb)


def detect_format(path: PathLike, fmt: str = "auto") -> str:
    """Return ``parquet`` or ``csv`` from an explicit format or the file name."""
    if fmt and fmt != "auto":
        if fmt not in ("parquet", "csv"):
            raise UserInputError(f"format must be auto, parquet or csv, got {fmt!r}")
        return fmt
    name = Path(path).name.lower()
    for suffix in (".gz", ".bz2", ".zst", ".lz4"):
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq")) or Path(path).is_dir():
        return "parquet"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    raise UserInputError(f"cannot tell the format of '{path}': name it .parquet or .csv, or set format")


def table_columns(path: PathLike, fmt: str = "auto", *, delimiter: str = ",") -> list[str]:
    """Column names of a Parquet or CSV file without reading its data."""
    if detect_format(path, fmt) == "parquet":
        return list(pq.read_schema(_first_parquet_file(path)).names)
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=1 << 16),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=True),
    )
    return list(reader.schema.names)


def iter_table_batches(
    path: PathLike,
    columns: list[str],
    *,
    fmt: str = "auto",
    batch_size: int = 262_144,
    delimiter: str = ",",
) -> Iterator[pa.RecordBatch]:
    """Stream record batches of ``columns`` from a Parquet file/dataset or a (compressed) CSV.

    CSV columns are read as raw bytes, so that neither a value that does not fit the type guessed
    from the first block nor a stray non-UTF-8 byte can abort the stream half-way; callers convert
    them (``gpuseg.data.convert``) and report bad values row by row.
    """
    if detect_format(path, fmt) == "parquet":
        for file in _parquet_files(path):
            pf = pq.ParquetFile(file)
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        return
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=1 << 24),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.binary() for c in columns},
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    yield from reader


def _parquet_files(path: PathLike) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise UserInputError(f"folder '{path}' holds no .parquet files")
        return files
    return [path]


def _first_parquet_file(path: PathLike) -> Path:
    return _parquet_files(path)[0]


def count_rows(path: PathLike) -> int:
    """Number of rows of a Parquet file or folder of Parquet files (metadata only)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in _parquet_files(path))
