"""Per-customer matrices on disk: read a block (Parquet keyed by customer_id) as float32, in row
batches or whole, and write a ``.npy`` matrix chunk by chunk.

Reading and writing by row batches keeps a job's memory bounded by the batch, not by the number
of customers: :class:`BlockFile` yields a block's rows batch by batch, :class:`NpyStreamWriter`
appends rows to a ``.npy`` file (memory-mappable afterwards with ``np.load(mmap_mode='r')``) with
plain writes, so no page of the output stays mapped in the writer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import atomic_path

#: rows per batch when a whole matrix is read (memory: one batch beside the output)
_READ_ROWS = 65536


def usable_type(t: pa.DataType) -> bool:
    """Whether a column of type ``t`` gives matrix columns (numbers, booleans, fixed-size vectors)."""
    return (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)
            or pa.types.is_fixed_size_list(t))


def select_columns(schema: pa.Schema, columns: Sequence[str] | None, where: str) -> tuple[list[str], list[str]]:
    """The columns used (``columns``, or every usable one when None) and the matrix column names.

    A ``fixed_size_list`` vector column ``v`` of size ``dim`` gives ``v[0]`` ... ``v[dim-1]``.
    ``where`` starts every error message (``"block 'text'"``, ``"'path'"``).
    """
    if "customer_id" not in schema.names:
        raise UserInputError(f"{where} has no customer_id column")
    available = [c for c in schema.names if c != "customer_id"]
    if columns is None:
        columns = [c for c in available if usable_type(schema.field(c).type)]
    columns = list(columns)
    unknown = [c for c in columns if c not in available]
    if unknown:
        raise UserInputError(f"{where} has no column(s) {unknown}; its columns are {available}")
    names: list[str] = []
    for name in columns:
        t = schema.field(name).type
        if pa.types.is_fixed_size_list(t):
            names += [f"{name}[{i}]" for i in range(t.list_size)]
        elif usable_type(t):
            names.append(name)
        else:
            raise UserInputError(f"{where}: column {name!r} of type {t} is not numeric")
    if not names:
        raise UserInputError(f"{where} has no numeric columns")
    return columns, names


def table_matrix(table: pa.Table | pa.RecordBatch, columns: Sequence[str],
                 out: np.ndarray | None = None) -> np.ndarray:
    """float32 matrix of ``columns`` (checked by :func:`select_columns`); nulls become NaN.

    ``out``: an array of the right shape to fill (e.g. rows of a preallocated matrix).
    """
    width = sum(_width(table.schema.field(c).type) for c in columns)
    if out is None:
        out = np.empty((table.num_rows, width), dtype=np.float32)
    j = 0
    for name in columns:
        col = table.column(name)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if pa.types.is_fixed_size_list(col.type):
            dim = col.type.list_size
            out[:, j:j + dim] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            j += dim
        else:
            out[:, j] = col.cast(pa.float32()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            j += 1
    return out


def _width(t: pa.DataType) -> int:
    return t.list_size if pa.types.is_fixed_size_list(t) else 1


class BlockFile:
    """A per-customer block Parquet file, read in row batches as float32.

    Parameters
    ----------
    path : path-like
        Parquet file with ``customer_id`` and the block's columns.
    columns : sequence of str, optional
        Columns to use, in order; None: every numeric, boolean and vector column.
    where : str, optional
        How errors name the file (default: its path in quotes).

    Attributes
    ----------
    columns : list of str
        The file columns used; ``names`` the matrix column names (vectors spread out).
    n_rows : int
        Rows in the file.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str] | None = None, *, where: str | None = None):
        self.path = Path(path)
        self.where = where or f"'{self.path}'"
        self._file = pq.ParquetFile(self.path)
        self.columns, self.names = select_columns(self._file.schema_arrow, columns, self.where)
        self.n_rows = int(self._file.metadata.num_rows)

    def ids(self) -> pa.Array:
        """The customer ids, in row order (only that column is read)."""
        return self._file.read(columns=["customer_id"])["customer_id"].combine_chunks()

    def batches(self, batch_rows: int = _READ_ROWS) -> Iterator[np.ndarray]:
        """float32 row batches of the block, in file order; a row holding NaN or infinity is an error."""
        start = 0
        # one row group at a time: asked for all at once, the reader pre-buffers the whole file
        for group in range(self._file.num_row_groups):
            for batch in self._file.iter_batches(batch_size=int(batch_rows), row_groups=[group], columns=self.columns):
                x = table_matrix(batch, self.columns)
                check_finite(x, self.where, start)
                start += len(x)
                yield x


def check_finite(x: np.ndarray, where: str, offset: int = 0) -> None:
    """Error naming the first rows (``offset`` + row) of ``x`` that hold NaN or infinity."""
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        first = (np.flatnonzero(bad)[:5] + offset).tolist()
        raise UserInputError(f"{where} has rows with NaN or infinity (first rows {first}); "
                             "the upstream job should have imputed them")


def read_matrix(path: str | Path) -> tuple[pa.Array, np.ndarray, list[str]]:
    """Customer ids, the float32 matrix and its column names from a block Parquet file.

    Numeric and boolean columns give one column each; ``fixed_size_list`` vector columns give
    ``dim`` columns named ``<name>[i]``. String columns other than customer_id are an error.
    The matrix is filled batch by batch: peak memory is the matrix plus one batch.
    """
    names = pq.ParquetFile(path).schema_arrow.names
    block = BlockFile(path, [c for c in names if c != "customer_id"])
    matrix = np.empty((block.n_rows, len(block.names)), dtype=np.float32)
    start = 0
    for x in block.batches():
        matrix[start:start + len(x)] = x
        start += len(x)
    return block.ids(), matrix, block.names


class NpyStreamWriter:
    """Write a ``(n_rows, n_cols)`` ``.npy`` matrix chunk by chunk, atomically.

    Use as a context manager; the file appears under its final name only on a clean exit and
    when exactly ``n_rows`` rows were written.

    Parameters
    ----------
    path : path-like
        Final file name.
    n_rows, n_cols : int
        Shape of the matrix.
    dtype : numpy dtype, default=float32
    """

    def __init__(self, path: str | os.PathLike, n_rows: int, n_cols: int, dtype: np.dtype = np.float32):
        self.path = Path(path)
        self.shape = (int(n_rows), int(n_cols))
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._ctx = None
        self._fh = None

    def __enter__(self) -> NpyStreamWriter:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._fh = open(tmp, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._fh, header)
        return self

    def write(self, rows: np.ndarray) -> None:
        """Append rows of shape ``(k, n_cols)``."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.shape[1] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path.name}: cannot append rows of shape {rows.shape} at row {self.rows} "
                             f"of a {self.shape} matrix")
        self._fh.write(memoryview(rows).cast("B"))
        self.rows += len(rows)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._fh.close()
        if exc_type is None and self.rows != self.shape[0]:
            exc_type = ValueError
            exc = ValueError(f"{self.path.name}: {self.rows} rows written of {self.shape[0]}")
            self._ctx.__exit__(exc_type, exc, tb)
            raise exc
        self._ctx.__exit__(exc_type, exc, tb)
