"""Atomic, streaming reads and writes of Parquet, CSV, JSON and numpy artifacts.

Every write goes to a temporary file in the destination folder and is renamed into place, so a
job killed half-way never leaves a truncated artifact that a later job would trust.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
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
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; swap it in for ``path`` only if the block succeeds.

    The folder counterpart of :func:`atomic_path`: a reader finds the old folder or the new one,
    never a mix. An older ``path`` is moved aside, the new folder renamed into place, then the old
    one removed. The temporary folders are named ``.<name>.*.tmp``, the names a job's start
    clears (:mod:`gpuseg.runtime.publish`) after a killed run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = tmp.with_name(f"{tmp.name[:-len('.tmp')]}.old.tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp creates 0700 folders
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy scalars and arrays are converted).

    A NaN or infinity (a figure that is not defined) is written as ``null``: ``NaN`` is not JSON,
    and the tools users read these files with (jq, JavaScript, strict parsers) refuse it.
    """
    text = json.dumps(json_ready(obj), indent=2, default=_json_default, sort_keys=False, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def json_ready(value: Any) -> Any:
    """``value`` as JSON can hold it: every non-finite float (also in numpy scalars and arrays) replaced by None."""
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    return value


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


#: ``delimiter`` value for text files whose fields are separated by runs of spaces and tabs.
WHITESPACE = "whitespace"

# A quoted field (kept whole, blanks and all), blanks at the start or end of a line (dropped), or
# a run of blanks between fields (one tab).
_BLANKS_OR_QUOTED = re.compile(rb'(?P<quoted>"(?:[^"]|"")*")|(?P<edge>^[ \t]+|[ \t]+(?=\r?$))|[ \t]+', re.M)
_EDGE_BLANKS = re.compile(rb"^[ \t]+|[ \t]+(?=\r?$)", re.M)
_INNER_BLANKS = re.compile(rb"[ \t]+")


def _blank_or_quoted(m: re.Match) -> bytes:
    if m.group("quoted") is not None:
        return m.group("quoted")
    return b"" if m.group("edge") is not None else b"\t"


def _blanks_to_tabs(block: bytes) -> bytes:
    if b'"' not in block:
        # fast path: two C-level substitutions, no Python call per field
        return _INNER_BLANKS.sub(b"\t", _EDGE_BLANKS.sub(b"", block))
    return _BLANKS_OR_QUOTED.sub(_blank_or_quoted, block)


class WhitespaceCsvStream(io.RawIOBase):
    """A whitespace-separated text file, read as tab-separated text, one block at a time.

    Fields are separated by runs of spaces and tabs; blanks at the start and end of a line are
    ignored; double-quoted fields keep their blanks (a quoted field may not span lines). Memory
    stays bounded by the block size, and compressed files (``.gz``, ``.bz2``, ``.zst``) are
    decompressed on the way, so the stream can go straight to ``pyarrow.csv.open_csv`` with
    ``delimiter="\\t"``.

    Parameters
    ----------
    path : path-like
        The text file.
    block_size : int
        Bytes read from the file per block (a block is cut at its last line end).
    """

    def __init__(self, path: PathLike, block_size: int = 1 << 22):
        super().__init__()
        self._src = pa.input_stream(str(path), compression="detect")
        self._block_size = block_size
        self._pending = b""  # the unfinished last line of the previous block
        self._out = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out and not self._eof:
            self._out = memoryview(self._next_block())
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _next_block(self) -> bytes:
        chunk = self._src.read(self._block_size)
        if not chunk:
            self._eof = True
            block, self._pending = self._pending, b""
        else:
            data = self._pending + chunk
            cut = data.rfind(b"\n") + 1
            block, self._pending = data[:cut], data[cut:]
        return _blanks_to_tabs(block)

    def close(self) -> None:
        if not self.closed:
            self._src.close()
        super().close()


def _csv_input(path: PathLike, delimiter: str):
    """What ``pyarrow.csv.open_csv`` reads and the one-character delimiter it splits on."""
    if delimiter == WHITESPACE:
        return WhitespaceCsvStream(path), "\t"
    return path, delimiter


def duplicate_names(names: list[str]) -> list[str]:
    """Column names that appear more than once, in order of first appearance."""
    seen: set[str] = set()
    return list(dict.fromkeys(n for n in names if n in seen or seen.add(n)))


def table_columns(path: PathLike, fmt: str = "auto", *, delimiter: str = ",") -> list[str]:
    """Column names of a Parquet or CSV file without reading its data.

    Parameters
    ----------
    path : path-like
        Parquet file or folder, or (compressed) CSV file.
    fmt : {"auto", "parquet", "csv"}
        File format; ``auto`` goes by the file name.
    delimiter : str
        CSV field separator: one character, or ``"whitespace"`` for runs of spaces and tabs.

    Raises
    ------
    UserInputError
        When a column name appears twice: which of the two a mapping means would be a guess.
    """
    if detect_format(path, fmt) == "parquet":
        names = list(pq.read_schema(_first_parquet_file(path)).names)
    else:
        source, delim = _csv_input(path, delimiter)
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=1 << 16),
            parse_options=pacsv.ParseOptions(delimiter=delim),
            convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=True),
        )
        names = list(reader.schema.names)
        reader.close()
    duplicated = duplicate_names(names)
    if duplicated:
        raise UserInputError(f"'{path}' has duplicate column name(s) {duplicated}: rename them so that each "
                             "column has its own name")
    return names


def iter_table_batches(
    path: PathLike,
    columns: list[str],
    *,
    fmt: str = "auto",
    batch_size: int = 262_144,
    delimiter: str = ",",
    filter: pc.Expression | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches of ``columns`` from a Parquet file/dataset or a (compressed) CSV.

    Parquet goes through :mod:`pyarrow.dataset`: a file, or a folder of files (hive-partitioned
    folders such as ``year=2024/`` give their partition columns), read with column projection and,
    when ``filter`` is given (e.g. ``pc.field("timestamp") < as_of``), with the filter pushed down
    to skip row groups. Batches come in file order, so a read is deterministic.

    CSV columns are read as raw bytes, so that neither a value that does not fit the type guessed
    from the first block nor a stray non-UTF-8 byte can abort the stream half-way; callers convert
    them (``gpuseg.data.convert``) and report bad values row by row. ``delimiter="whitespace"``
    splits fields on runs of spaces and tabs (see :class:`WhitespaceCsvStream`). ``filter`` is for
    Parquet only.
    """
    if detect_format(path, fmt) == "parquet":
        yield from parquet_dataset(path).to_batches(columns=columns, filter=filter, batch_size=batch_size)
        return
    if filter is not None:
        raise ValueError("iter_table_batches: a filter applies to Parquet input only")
    source, delim = _csv_input(path, delimiter)
    reader = pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(block_size=1 << 24),
        parse_options=pacsv.ParseOptions(delimiter=delim, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.binary() for c in columns},
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    yield from reader


def parquet_dataset(path: PathLike) -> ds.Dataset:
    """A Parquet file or folder as a :class:`pyarrow.dataset.Dataset` (hidden and ``_`` files left out)."""
    path = Path(path)
    if path.is_dir():
        parquet_files(path)  # a clear error for a folder without Parquet files
        return ds.dataset(str(path), format="parquet", partitioning="hive", ignore_prefixes=[".", "_"])
    return ds.dataset(str(path), format="parquet")


def parquet_files(path: PathLike) -> list[Path]:
    """The Parquet file itself, or the ``.parquet`` files of a folder (sorted, hidden ones left out)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise UserInputError(f"folder '{path}' holds no .parquet files")
        return files
    return [path]


def _first_parquet_file(path: PathLike) -> Path:
    return parquet_files(path)[0]


def count_rows(path: PathLike) -> int:
    """Number of rows of a Parquet file or folder of Parquet files (metadata only)."""
    return parquet_dataset(path).count_rows()
