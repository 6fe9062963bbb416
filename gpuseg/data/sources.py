"""Named input files as DuckDB views, and the SQL query that builds a canonical table from them.

Users often hold a table as several files (orders, order lines, a customer register) that only a
join turns into one row per event. Each named source becomes a view over DuckDB's ``read_csv`` or
``read_parquet``; a table's query runs over those views and its result streams out as Arrow record
batches, so validation sees the same batches as for a single file.

A join's output order is not fixed from run to run, so every query is run as
``select * from (<query>) order by all``: its rows come out sorted by all their columns, left to
right, and the same inputs give the same validated tables, bit for bit.
"""

from __future__ import annotations

import glob
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from gpuseg.data.mapping import SourceSpec
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import WHITESPACE, WhitespaceCsvStream, detect_format, parquet_files

_CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".dat")


def ordered_query(query: str) -> str:
    """``query`` wrapped so that its rows come out in one total order.

    Parameters
    ----------
    query : str
        One SQL select statement; trailing semicolons and comments are dropped (they cannot sit
        inside a subquery).

    Returns
    -------
    str
        ``select * from (<query>) order by all``. Rows equal in every column are
        indistinguishable, so the order is total as far as the output can tell.
    """
    import duckdb

    end = len(query)
    for pos, kind in reversed(duckdb.tokenize(query)):
        if getattr(kind, "name", str(kind)) == "comment" or query.startswith(";", pos):
            end = pos
        else:
            break
    # the newline before ")" also ends a "-- comment" left inside the query
    return f"select * from (\n{query[:end].rstrip()}\n) order by all"


def sql_literal(value: Any) -> str:
    """A Python value (from YAML) as a DuckDB SQL literal, for ``read_csv``/``read_parquet`` options.

    Strings are quoted (``'`` doubled), lists become ``[...]`` and mappings struct literals
    ``{'key': value}`` (e.g. ``types={'id': 'VARCHAR'}``).

    Raises
    ------
    ValueError
        For a value with no literal form (NaN, an arbitrary object).
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no SQL literal")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{sql_literal(str(k))}: {sql_literal(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"{value!r} ({type(value).__name__}) has no SQL literal")


class QueryStream:
    """The rows of one query as Arrow record batches; a failure mid-stream is a UserInputError.

    Iterate once; the stream closes itself at the end (or call :meth:`close`), which frees the
    connection for the next query.
    """

    def __init__(self, reader: pa.RecordBatchReader, fail):
        self._reader = reader
        self._fail = fail

    @property
    def schema(self) -> pa.Schema:
        """Column names and types of the query's result."""
        return self._reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        import duckdb

        try:
            yield from self._reader
        except (duckdb.Error, pa.ArrowException) as exc:
            raise self._fail(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading and release the result."""
        self._reader.close()


class SourceDatabase:
    """An in-memory DuckDB with one view per named source, to run table queries over.

    Parameters
    ----------
    sources : mapping of str to SourceSpec
        The named inputs; each becomes a view of that name.
    temp_dir : path-like, optional
        Where DuckDB spills large sorts and whitespace-separated files are rewritten as
        tab-separated ones (removed on :meth:`close`); the system temp folder by default.
    prefix : str
        Dotted config path of the data section, for the config keys named in errors.

    Raises
    ------
    UserInputError
        When a source's file is missing or DuckDB cannot read it, naming ``<prefix>.sources.<name>``.
    """

    def __init__(self, sources: Mapping[str, SourceSpec], *, temp_dir: str | Path | None = None,
                 prefix: str = "data"):
        import duckdb

        self.prefix = prefix
        self._tmp = Path(tempfile.mkdtemp(prefix=".gpuseg-sources-", dir=temp_dir))
        self._con = duckdb.connect(":memory:")
        try:
            self._con.execute(f"set temp_directory = {sql_literal(str(self._tmp / 'spill'))}")
            for spec in sources.values():
                self._add_view(spec)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SourceDatabase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and remove the temporary files."""
        if self._con is not None:
            self._con.close()
            self._con = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def query(self, query: str, *, table: str, batch_size: int = 262_144) -> QueryStream:
        """Run ``query``, sort its result by all columns (``order by all``) and stream it.

        Parameters
        ----------
        query : str
            The user's SQL select statement over the source views (a trailing ``;`` and
            comments are fine).
        table : str
            Canonical table it builds (``customers``, ``events``, ``texts``), for messages.
        batch_size : int
            Rows per record batch.

        Raises
        ------
        UserInputError
            For a syntax error, an unknown table or column, or a failure while the rows are
            produced: names the table, the query, DuckDB's message and ``<prefix>.<table>.query``.
        """
        import duckdb

        def fail(exc: Exception | str) -> UserInputError:
            return UserInputError(f"the query failed: {exc}\n  query: {query.strip()}", table=table,
                                  config_key=f"{self.prefix}.{table}.query")

        try:
            statements = self._con.extract_statements(query)
            if len(statements) != 1 or getattr(statements[0].type, "name", "") != "SELECT":
                raise fail(f"it must be one select statement, got {len(statements)} statement(s) of type "
                           f"{[getattr(st.type, 'name', st.type) for st in statements]}")
            relation = self._con.sql(ordered_query(query))
            reader = (relation.to_arrow_reader(batch_size) if hasattr(relation, "to_arrow_reader")
                      else relation.fetch_record_batch(batch_size))  # duckdb < 1.4
        except duckdb.Error as exc:
            raise fail(exc) from None
        return QueryStream(reader, fail)

    def _add_view(self, spec: SourceSpec) -> None:
        import duckdb

        key = f"{self.prefix}.sources.{spec.name}"
        files = _source_files(spec, key)
        try:
            fmt = detect_format(files[0], spec.format)
        except UserInputError as exc:
            raise UserInputError(exc.args[0], config_key=f"{key}.format") from None
        if fmt == "csv" and spec.delimiter == WHITESPACE:
            files = [self._as_tab_separated(f, i, spec.name) for i, f in enumerate(files)]
        try:
            options = dict(_read_options(fmt, spec.delimiter), **spec.options)
            args = ", ".join([sql_literal([str(f) for f in files])]
                             + [f"{k} = {sql_literal(v)}" for k, v in options.items()])
        except ValueError as exc:
            raise ConfigError(f"source '{spec.name}': {exc}", config_key=f"{key}.options") from None
        reader = "read_parquet" if fmt == "parquet" else "read_csv"
        try:
            self._con.execute(f'create view "{spec.name}" as select * from {reader}({args})')
        except duckdb.Error as exc:
            raise UserInputError(f"cannot read source '{spec.name}' ({spec.path}): {exc}",
                                 config_key=key) from None

    def _as_tab_separated(self, path: Path, i: int, name: str) -> Path:
        """Rewrite a whitespace-separated file as a tab-separated one that DuckDB can read (streamed)."""
        out = self._tmp / f"{name}.{i}.tsv"
        with WhitespaceCsvStream(path) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        return out


def _read_options(fmt: str, delimiter: str | None) -> dict[str, Any]:
    if fmt == "parquet":
        return {}
    if delimiter == WHITESPACE:
        return {"delim": "\t", "quote": '"', "header": True}
    return {"delim": delimiter} if delimiter else {}


def _source_files(spec: SourceSpec, key: str) -> list[Path]:
    """The files of a source (a file, a folder, or a glob), checked to exist."""
    path = Path(spec.path)
    if any(ch in spec.path for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(spec.path, recursive=True)) if Path(p).is_file()]
        if not files:
            raise UserInputError(f"source '{spec.name}': no file matches '{spec.path}'", config_key=f"{key}.path")
        return files
    if not path.exists():
        raise UserInputError(f"source '{spec.name}': file not found: '{path}'", config_key=f"{key}.path")
    if not path.is_dir():
        return [path]
    if spec.format == "csv":
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and _strip_compression(p.name.lower()).endswith(_CSV_SUFFIXES))
        if not files:
            raise UserInputError(f"source '{spec.name}': folder '{path}' holds no CSV files",
                                 config_key=f"{key}.path")
        return files
    try:
        return parquet_files(path)
    except UserInputError as exc:
        raise UserInputError(f"source '{spec.name}': {exc.args[0]}", config_key=f"{key}.path") from None


def _strip_compression(name: str) -> str:
    for suffix in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    return name
