"""Per-customer matrices on disk: read a block (Parquet keyed by customer_id) as float32, in row
batches or whole, and write a ``.npy`` matrix chunk by chunk.

Reading and writing by row batches keeps a job's memory bounded by the batch, not by the number
of customers: :class:`BlockFile` yields a block's rows batch by batch, :class:`NpyStreamWriter`
appends rows to a ``.npy`` file (memory-mappable afterwards with ``np.load(mmap_mode='r')``) with
plain writes, so no page of the output stays mapped in the writer, and :class:`MatrixFile` reads
such a file back by row blocks and gathers without keeping its pages resident.
"""

from __future__ import annotations

import mmap
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


def read_matrix_rows(path: str | Path, lo: int, hi: int) -> tuple[pa.Array, np.ndarray, list[str]]:
    """Rows ``[lo, hi)`` of a block Parquet file: their ids, float32 matrix and the column names.

    Only the row groups that overlap the range are read (a torchrun rank's shard of the fused
    matrix, without the rest of it). Columns and checks as :func:`read_matrix`.
    """
    names = pq.ParquetFile(path).schema_arrow.names
    block = BlockFile(path, [c for c in names if c != "customer_id"])
    if not 0 <= lo <= hi <= block.n_rows:
        raise UserInputError(f"rows {lo}..{hi} are outside '{path}' ({block.n_rows} rows)")
    matrix = np.empty((hi - lo, len(block.names)), dtype=np.float32)
    ids, start, filled = [], 0, 0
    for group in range(block._file.num_row_groups):
        size = block._file.metadata.row_group(group).num_rows
        first, last = max(lo, start), min(hi, start + size)
        if first < last:
            table = block._file.read_row_group(group, columns=["customer_id", *block.columns])
            table = table.slice(first - start, last - first)
            x = table_matrix(table, block.columns)
            check_finite(x, block.where, first)
            matrix[filled:filled + len(x)] = x
            ids.append(table["customer_id"].combine_chunks().cast(pa.string()))
            filled += len(x)
        start += size
    ids_array = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    return ids_array, matrix, block.names


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


#: gathered rows copied between two releases of the mapped pages: a gather's resident file pages
#: stay a few MB whatever the number of rows asked for
_GATHER_ROWS = 4096


class MatrixFile:
    """A 2-D ``.npy`` matrix on disk, read into fresh arrays by row slices and row gathers.

    Resident memory stays what the caller asks for: contiguous rows are read with ``os.preadv``
    (no page of the file is mapped), gathered rows are copied out of a read-only mapping whose
    pages are released (``MADV_DONTNEED``) every few thousand rows. A plain ``np.memmap`` keeps
    every page it touched in the process's resident set (``ru_maxrss`` counts file pages), so a
    pass over a 15 GB matrix would cost 15 GB of RSS.

    Parameters
    ----------
    path : path-like
        A C-order 2-D ``.npy`` file (as :class:`NpyStreamWriter` writes).

    Attributes
    ----------
    shape : tuple of int
        ``(n_rows, n_cols)`` of this view; ``dtype`` the file's dtype.

    Notes
    -----
    ``x[lo:hi]`` reads rows, ``x[idx]`` gathers the rows of an integer array (any order, rows come
    back in that order), :meth:`view` is a lazy row range of the same file (a torchrun shard).
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        shape, dtype, self._offset = _npy_header(self.path)
        self.dtype = dtype
        self._rows = (0, shape[0])
        self._cols = shape[1]
        self._row_bytes = shape[1] * dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)
        self._map = self._array = None
        if shape[0] * self._row_bytes:
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
            self._array = np.frombuffer(self._map, dtype, count=shape[0] * shape[1],
                                        offset=self._offset).reshape(shape)
        self._owner = True

    @property
    def shape(self) -> tuple[int, int]:
        return (self._rows[1] - self._rows[0], self._cols)

    def __len__(self) -> int:
        return self.shape[0]

    def view(self, lo: int, hi: int) -> MatrixFile:
        """Rows ``lo:hi`` of this view, read lazily (shares the open file; close the original)."""
        lo, hi, _ = slice(lo, hi).indices(len(self))
        sub = object.__new__(MatrixFile)
        sub.__dict__.update(self.__dict__, _owner=False,
                            _rows=(self._rows[0] + lo, self._rows[0] + max(lo, hi)))
        return sub

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            lo, hi, step = key.indices(len(self))
            if step != 1:
                raise IndexError(f"{self.path.name}: only contiguous row slices are read, got step {step}")
            return self.read(lo, max(lo, hi))
        return self.take(key)

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` (of this view) as a new array, read with plain reads."""
        out = np.empty((hi - lo, self._cols), dtype=self.dtype)
        buf = memoryview(out).cast("B")
        start, done = self._offset + (self._rows[0] + lo) * self._row_bytes, 0
        while done < len(buf):
            got = os.preadv(self._fd, [buf[done:]], start + done)
            if got == 0:
                raise UserInputError(f"'{self.path}' is shorter than its header says (truncated?)")
            done += got
        return out

    def take(self, index) -> np.ndarray:
        """The rows of integer array ``index`` (of this view), in that order, as a new array."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        n = len(self)
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"{self.path.name}: row index out of range for {n} rows")
        index = np.where(index < 0, index + n, index) + self._rows[0]
        out = np.empty((len(index), self._cols), dtype=self.dtype)
        order = np.argsort(index, kind="stable")
        rows = index[order]
        for s in range(0, len(rows), _GATHER_ROWS):
            part = rows[s:s + _GATHER_ROWS]
            out[order[s:s + _GATHER_ROWS]] = self._array[part]
            self._release(int(part[0]), int(part[-1]) + 1)
        return out

    def _release(self, lo: int, hi: int) -> None:
        """Drop the mapped pages of file rows ``lo:hi`` from this process (the page cache keeps them)."""
        start = self._offset + lo * self._row_bytes
        aligned = start - start % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, aligned, start + (hi - lo) * self._row_bytes - aligned)

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows start:start+rows)`` over this view, in order."""
        for s in range(0, len(self), int(rows)):
            yield s, self.read(s, min(len(self), s + int(rows)))

    def close(self) -> None:
        """Close the file (a view leaves it to the original)."""
        if not self._owner or self._fd < 0:
            return
        self._array = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view still reads it: the mapping goes with the last of them
                pass
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> MatrixFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _npy_header(path: Path) -> tuple[tuple[int, int], np.dtype, int]:
    """Shape, dtype and data offset of a 2-D C-order ``.npy``; a clear error for anything else."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (OSError, ValueError) as exc:
        raise UserInputError(f"'{path}' is not a readable .npy matrix: {exc}") from exc
    if len(shape) != 2 or fortran or dtype.hasobject or not np.issubdtype(dtype, np.number):
        raise UserInputError(f"'{path}' must hold a 2-D C-order numeric matrix, got shape {shape}, dtype {dtype}"
                             f"{', Fortran order' if fortran else ''}")
    need = offset + shape[0] * shape[1] * dtype.itemsize
    if path.stat().st_size < need:
        raise UserInputError(f"'{path}' is shorter than its header says ({path.stat().st_size} of {need} bytes): "
                             "truncated?")
    return (int(shape[0]), int(shape[1])), dtype, offset


def open_matrix(parquet: str | os.PathLike, scratch: str | os.PathLike,
                batch_rows: int = _READ_ROWS) -> tuple[pa.Array, MatrixFile, list[str]]:
    """Customer ids, a :class:`MatrixFile` and the column names of a block Parquet file.

    The matrix is the ``.npy`` of the same name beside the Parquet file (``fuse/fused.npy`` beside
    ``fused.parquet``), checked to match it (rows, columns) and to be finite, block by block;
    without one, the Parquet file is streamed once into ``scratch/<name>.npy``. Memory: one
    batch of ``batch_rows`` rows, whatever the file's size. Columns as :func:`read_matrix`.
    """
    parquet = Path(parquet)
    names = pq.ParquetFile(parquet).schema_arrow.names
    block = BlockFile(parquet, [c for c in names if c != "customer_id"])
    npy = parquet.with_suffix(".npy")
    if npy.is_file():
        matrix = MatrixFile(npy)
        try:
            _check_beside(matrix, block, batch_rows)
        except BaseException:
            matrix.close()
            raise
    else:
        npy = Path(scratch) / npy.name
        with NpyStreamWriter(npy, block.n_rows, len(block.names)) as out:
            for x in block.batches(batch_rows):
                out.write(x)
        matrix = MatrixFile(npy)
    return block.ids(), matrix, block.names


def matrix_within(parquet: str | os.PathLike, budget_bytes: int, scratch: str | os.PathLike,
                  batch_rows: int = _READ_ROWS) -> tuple[pa.Array, np.ndarray | MatrixFile, list[str]]:
    """The matrix of a block Parquet file: whole in memory within ``budget_bytes``, else on disk.

    A matrix of ``rows x columns x 4`` bytes within the budget is read as :func:`read_matrix` does;
    a larger one is :func:`open_matrix`'s :class:`MatrixFile` (``scratch``: the folder for a
    temporary copy when no ``.npy`` lies beside the file). The caller closes a returned MatrixFile.
    """
    block = BlockFile(parquet, [c for c in pq.ParquetFile(parquet).schema_arrow.names if c != "customer_id"])
    if block.n_rows * len(block.names) * 4 <= budget_bytes:
        return read_matrix(parquet)
    return open_matrix(parquet, scratch, batch_rows=batch_rows)


def _check_beside(matrix: MatrixFile, block: BlockFile, batch_rows: int) -> None:
    """Error naming both files unless ``matrix`` is a finite float32 copy of ``block``'s shape."""
    want = (block.n_rows, len(block.names))
    if matrix.shape != want or matrix.dtype != np.float32:
        raise UserInputError(f"'{matrix.path}' does not match '{block.path}': it holds a {matrix.shape} "
                             f"{matrix.dtype} matrix, the Parquet file {want[0]} rows x {want[1]} float32 columns; "
                             f"rerun the job that wrote them, or remove '{matrix.path.name}'")
    for start, x in matrix.blocks(batch_rows):
        check_finite(x, f"'{matrix.path}'", start)
