"""Streaming validation: user files in, canonical tables + rejects + a report out.

A table comes from one file (``path``) or from a SQL query over named sources (``query``, run by
DuckDB, see :mod:`gpuseg.data.sources`); either way it arrives as Arrow record batches.

Fatal problems (missing file or column, unparseable values, duplicate customer ids, non-finite
amounts, empty tables, ids that match almost no customer, an ``as_of`` before the data) raise
:class:`UserInputError` naming the table, column, first offending rows and the config key to
change. Recoverable problems (rows without a customer id, events or texts of unknown customers,
empty texts, duplicate events or customers) follow the configured policy: ``error`` stops the
same way, ``reject`` (or ``first``/``last`` for duplicate customers) sets the rows aside in
``rejects/<table>.parquet`` with a reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpuseg.data import convert
from gpuseg.data.mapping import CustomersSpec, DataMapping, EventsSpec, FileSpec, Policy, TextsSpec
from gpuseg.data.repeats import RepeatFinder
from gpuseg.data.schema import EVENTS, REJECTS, SCHEMA_VERSION, TEXTS, validated_dir
from gpuseg.data.sources import QueryStream, SourceDatabase
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import (
    ParquetStreamWriter,
    atomic_path,
    iter_table_batches,
    table_columns,
    write_json,
    write_parquet,
)
from gpuseg.runtime.progress import progress_bar

log = logging.getLogger(__name__)

MAX_ROWS_SHOWN = 5

#: share of the rows with an id whose customer is unknown above which the ids look mismatched
MISMATCH_SHARE = 0.9

#: rejects reason of a text row kept for its rating, without its (empty) text
EMPTY_TEXT_RATING_KEPT = "empty text: text dropped, rating kept"


@dataclass
class TableReport:
    """What validation did to one table."""

    rows_read: int = 0
    rows_kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    repaired_utf8: int = 0
    # rows kept, but with a value set aside (also listed in the rejects file), by reason
    dropped_values: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "rejected": dict(self.rejected), "repaired_utf8": self.repaired_utf8,
                "dropped_values": dict(self.dropped_values)}


def _as_rows(raw: pa.RecordBatch) -> list[dict[str, Any]]:
    """Rows as dicts; timestamps past what Python's datetime holds (a corrupt file) as raw integers."""
    try:
        return raw.to_pylist()
    except (OverflowError, ValueError):
        columns = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) or pa.types.is_date64(c.type) else c
                   for c in raw.columns]
        return pa.RecordBatch.from_arrays(columns, names=raw.schema.names).to_pylist()


class _Batch:
    """One batch of raw user rows and its position in the file, for error messages and rejects."""

    def __init__(self, table: str, raw: pa.RecordBatch, offset: int, hidden: frozenset[str] = frozenset()):
        self.table = table
        self.raw = raw
        self.offset = offset
        # personal data columns: read, but never shown in an error message or a rejects record
        self.hidden = hidden

    def _take(self, idx: np.ndarray) -> list[dict[str, Any]]:
        # CSV columns arrive as bytes: show them as text, whatever their encoding
        return [{k: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for k, v in r.items()
                 if k not in self.hidden}
                for r in _as_rows(self.raw.take(pa.array(idx)))]

    def rows(self, mask: np.ndarray, limit: int = MAX_ROWS_SHOWN) -> list[str]:
        """Format the first offending rows (0-based data row numbers) for an error message."""
        idx = np.flatnonzero(mask)[:limit]
        return [f"row {self.offset + int(i)}: " + ", ".join(f"{k}={v!r}" for k, v in r.items())
                for i, r in zip(idx, self._take(idx), strict=True)]

    def records(self, mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Row numbers and JSON records of the rows in ``mask``, for the rejects file."""
        idx = np.flatnonzero(mask)
        return self.offset + idx, [json.dumps(r, default=str) for r in self._take(idx)]


class _Rejects:
    """Collects rejected rows of all tables; written once at the end."""

    def __init__(self):
        self.parts: dict[str, list[pa.Table]] = {}

    def add(self, batch: _Batch, mask: np.ndarray, reason: str, customer_ids: pa.Array) -> int:
        if not mask.any():
            return 0
        rows, records = batch.records(mask)
        n = len(rows)
        self.parts.setdefault(batch.table, []).append(pa.table({
            "table": pa.array([batch.table] * n, pa.string()),
            "row": pa.array(rows, pa.int64()),
            "reason": pa.array([reason] * n, pa.string()),
            "customer_id": customer_ids.filter(pa.array(mask)),
            "record": pa.array(records, pa.string()),
        }, schema=REJECTS))
        return n

    def write(self, folder: Path) -> dict[str, str]:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.parquet"):
            old.unlink()
        written = {}
        for table, parts in self.parts.items():
            path = folder / f"{table}.parquet"
            with atomic_path(path) as tmp:
                pq.write_table(pa.concat_tables(parts), tmp, compression="zstd")
            written[table] = str(path)
        return written


def _check_file(spec: FileSpec, table: str, required: list[str], key: str) -> None:
    path = Path(spec.path)
    if not path.exists():
        raise UserInputError(f"file not found: '{path}'", table=table, config_key=f"{key}.path")
    try:
        present = table_columns(path, spec.format, delimiter=spec.delimiter)
    except UserInputError as exc:
        raise UserInputError(exc.args[0], table=table, config_key=exc.config_key or f"{key}.path") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserInputError(f"cannot read '{path}': {exc}", table=table, config_key=f"{key}.path") from None
    missing = [c for c in required if c not in present]
    if missing:
        raise UserInputError(
            f"column(s) {missing} not found in '{path}'; the file has {present}",
            table=table, column=missing[0], config_key=f"{key}.columns",
        )


def _open(spec: FileSpec, table: str, columns: list[str], batch_size: int, key: str,
          db: SourceDatabase | None, hidden: frozenset[str] = frozenset()) -> Iterator[_Batch]:
    """Check that the table's input has ``columns``, then return its batches (file or query).

    ``hidden`` columns (personal data) are left out of the rows errors and rejects show.
    """
    if spec.query:
        return _query_batches(spec, table, columns, batch_size, key, db, hidden)
    _check_file(spec, table, columns, key)
    return _batches(spec, table, columns, batch_size, key, hidden)


def _batches(spec: FileSpec, table: str, columns: list[str], batch_size: int, key: str,
             hidden: frozenset[str]):
    offset = 0
    try:
        for raw in iter_table_batches(spec.path, columns, fmt=spec.format, batch_size=batch_size,
                                      delimiter=spec.delimiter):
            yield _Batch(table, raw, offset, hidden)
            offset += raw.num_rows
    except (pa.ArrowException, OSError, OverflowError) as exc:  # a corrupt or truncated file
        raise UserInputError(f"cannot read '{spec.path}' after row {offset}: {exc}", table=table,
                             config_key=f"{key}.path") from None


def _query_batches(spec: FileSpec, table: str, columns: list[str], batch_size: int, key: str,
                   db: SourceDatabase, hidden: frozenset[str]) -> Iterator[_Batch]:
    stream = db.query(spec.query, table=table, batch_size=batch_size)
    present = list(stream.schema.names)
    missing = [c for c in columns if c not in present]
    if missing:
        stream.close()
        raise UserInputError(f"column(s) {missing} not in the output of the query; it has {present}",
                             table=table, column=missing[0], config_key=f"{key}.columns")
    return _stream_batches(stream, table, columns, hidden)


def _stream_batches(stream: QueryStream, table: str, columns: list[str],
                    hidden: frozenset[str]) -> Iterator[_Batch]:
    offset = 0
    for raw in stream:
        # only the mapped columns, as for a file, so rejects records look the same
        raw = pa.RecordBatch.from_arrays([raw.column(c) for c in columns], names=columns)
        yield _Batch(table, raw, offset, hidden)
        offset += raw.num_rows


def _where(spec: FileSpec) -> str:
    """The table's input, for messages."""
    return "the query's result" if spec.query else f"'{spec.path}'"


def _input_key(spec: FileSpec, key: str) -> str:
    return f"{key}.query" if spec.query else f"{key}.path"


def _open_sources(mapping: DataMapping, out: Path):
    """The DuckDB sources when a table is built by a query; nothing to open otherwise."""
    if not mapping.uses_queries:
        return contextlib.nullcontext(None)
    return SourceDatabase(mapping.sources, temp_dir=out)


def _fail_on(mask: np.ndarray, batch: _Batch, message: str, column: str, key: str) -> None:
    if mask.any():
        raise UserInputError(f"{message} ({int(mask.sum())} in this batch)", table=batch.table,
                             column=column, config_key=key, rows=batch.rows(mask))


def _apply_policy(policy: str, mask: np.ndarray, batch: _Batch, reason: str, column: str,
                  key: str, rejects: _Rejects, ids: pa.Array, report: TableReport) -> np.ndarray:
    """Return the keep-mask after handling ``mask`` rows by ``policy``."""
    if not mask.any():
        return ~mask
    if policy == "error":
        _fail_on(mask, batch, f"{reason}; set the policy to 'reject' to set such rows aside", column, key)
    report.rejected[reason] += rejects.add(batch, mask, reason, ids)
    return ~mask


def _mask(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False).astype(bool)


def _null_mask(arr: pa.Array) -> np.ndarray:
    return ~_mask(pc.is_valid(arr))


#: the instants (microseconds since 1970) a customer event can plausibly have: 1900-01-01 to 2200-01-01
_PLAUSIBLE_US = (-2208988800 * 10**6, 7258118400 * 10**6)


def _timestamps(arr: pa.Array, fmt: str | None, unit: str, batch: _Batch, column: str,
                key: str) -> pa.Array:
    """Parse a timestamp column; unparseable values are an error naming ``<key>.timestamp_format``."""
    try:
        ts, bad = convert.to_timestamp(arr, fmt=fmt, unit=unit)
    except UserInputError as exc:  # numbers that look like YYYYMMDD dates
        raise UserInputError(exc.args[0], table=batch.table, column=column, config_key=f"{key}.timestamp_format",
                             rows=batch.rows(np.ones(batch.raw.num_rows, dtype=bool))) from None
    except pa.ArrowInvalid as exc:  # an instant past what a microsecond timestamp can hold
        raise UserInputError(f"timestamps out of range ({exc}): a corrupt file, or the wrong timestamp_unit?",
                             table=batch.table, column=column, config_key=f"{key}.timestamp_unit") from None
    _fail_on(bad, batch, "unparseable timestamp (set timestamp_format, e.g. '%d/%m/%Y %H:%M')", column,
             f"{key}.timestamp_format")
    micros = ts.cast(pa.int64()).fill_null(_PLAUSIBLE_US[0]).to_numpy(zero_copy_only=False)
    _fail_on((micros < _PLAUSIBLE_US[0]) | (micros >= _PLAUSIBLE_US[1]), batch,
             "timestamp before 1900 or after 2199 (a corrupt file, or the wrong timestamp_unit?)", column,
             f"{key}.timestamp_unit")
    return ts


class _UnknownIds:
    """Counts rows of unknown customers, to tell a table whose ids are written differently from
    the customers' (42 against '00042') from a few strangers."""

    def __init__(self, table: str):
        self.table = table
        self.with_id = 0
        self.unknown = 0
        self.example: str | None = None

    def add(self, ids: pa.Array, with_id: np.ndarray, unknown: np.ndarray) -> None:
        self.with_id += int(with_id.sum())
        self.unknown += int(unknown.sum())
        if self.example is None and unknown.any():
            self.example = ids[int(np.flatnonzero(unknown)[0])].as_py()

    def mismatched(self) -> bool:
        return self.unknown >= 1 and self.unknown > MISMATCH_SHARE * self.with_id

    def error(self, known_ids: pa.Array, rejects_path: Path | None) -> UserInputError:
        table = self.table
        where = f" The rejected rows are in '{rejects_path}'." if rejects_path else ""
        return UserInputError(
            f"{self.unknown} of {self.with_id} {table} rows with a customer id "
            f"({100 * self.unknown / self.with_id:.0f}%) name a customer that is not in the customers table, so "
            f"the two tables most likely write ids differently ({table} has e.g. {self.example!r}, customers "
            f"has e.g. {known_ids[0].as_py()!r}). Make them agree: zero-padded ids read as numbers lose their "
            "zeros (read them as text, e.g. options: {all_varchar: true} on a source, or cast in the query), "
            f"and check data.customers.columns.customer_id and data.{table}.columns.customer_id. This stops even "
            "with data.policy.unknown_customer: reject, since setting (nearly) every row aside is never the "
            f"intent.{where}",
            table=table, config_key=f"data.{table}.columns.customer_id")


# ---------------------------------------------------------------------------------------- customers


def _validate_customers(spec: CustomersSpec, batch_size: int, out: Path, rejects: _Rejects,
                        policy: Policy, show: bool,
                        db: SourceDatabase | None = None) -> tuple[pa.Array, TableReport, dict[str, Any]]:
    key = "data.customers"
    attrs = list(dict.fromkeys(spec.numeric + spec.categorical + spec.labels))
    private = [*spec.pii, *([spec.consent] if spec.consent else [])]
    source = list(dict.fromkeys([spec.customer_id] + attrs + ([spec.order_by] if spec.order_by else []) + private))
    report = TableReport()
    id_parts, rows, order = [], [], []
    # the raw batches are kept only when duplicates may be dropped: their rows go to the rejects
    kept: list[tuple[_Batch, pa.Array]] = []
    order_kinds: set[str] = set()
    bar = progress_bar(show, desc="validate customers", unit="rows")
    # pass 1 streams the converted rows to a scratch file: only the ids (for the duplicate check)
    # stay in memory, not the table
    pass1 = out / ".customers.pass1.parquet"
    writer = None
    with contextlib.ExitStack() as stack:  # the scratch file goes if a row stops validation
        for batch in _open(spec.file, "customers", source, batch_size, key, db, hidden=frozenset(spec.pii)):
            raw = batch.raw
            report.rows_read += raw.num_rows
            ids = convert.to_customer_id(raw.column(spec.customer_id))
            keep = _apply_policy(policy.missing_customer_id, _null_mask(ids), batch, "missing customer_id",
                                 spec.customer_id, "data.policy.missing_customer_id", rejects, ids, report)
            columns = {"customer_id": ids}
            for name in spec.numeric:
                values, bad = convert.to_float(raw.column(name))
                _fail_on(bad, batch, "expected a number", name, f"{key}.numeric")
                columns[name] = values
            for name in spec.categorical:
                values, repaired = convert.to_string(raw.column(name))
                report.repaired_utf8 += repaired
                columns[name] = values
            for name in spec.labels:
                values, bad = _to_label(raw.column(name))
                _fail_on(bad, batch, "expected a label such as 0/1, true/false or yes/no", name, f"{key}.labels")
                columns[name] = values
            columns.update(_private_columns(spec, raw, batch, report))
            part = pa.table(columns).filter(pa.array(keep))
            if writer is None:
                writer = stack.enter_context(ParquetStreamWriter(pass1, part.schema))
            writer.write(part)
            id_parts.append(part["customer_id"].combine_chunks())
            rows.append(batch.offset + np.flatnonzero(keep))
            if spec.order_by:
                order.append(_order_key(raw.column(spec.order_by), batch, spec.order_by, order_kinds)[keep])
            if policy.duplicate_customer != "error":
                kept.append((batch, ids))
            bar.update(raw.num_rows)
    bar.close()
    try:
        ids = pa.concat_arrays(id_parts) if id_parts else pa.array([], pa.string())
        if len(ids) == 0:
            raise UserInputError(f"no customers with an id in {_where(spec.file)} (the table is empty)",
                                 table="customers", config_key=_input_key(spec.file, key))
        keep = _duplicate_customers(ids, np.concatenate(rows), np.concatenate(order) if order else None,
                                    spec, policy.duplicate_customer, kept, rejects, report)
        report.rows_kept = int(keep.sum())
        _write_customers(out, pass1, keep, private, batch_size)
    finally:
        pass1.unlink(missing_ok=True)
    meta = {"numeric": spec.numeric, "categorical": spec.categorical, "labels": spec.labels,
            "pii": dict(spec.pii), "consent": spec.consent}
    return ids.filter(pa.array(keep)), report, meta


def _write_customers(out: Path, pass1: Path, keep: np.ndarray, private: list[str], batch_size: int) -> None:
    """``customers.parquet`` (and ``pii.parquet``) from the pass-1 rows kept, batch by batch."""
    source = pq.ParquetFile(pass1)
    schema = source.schema_arrow
    public = pa.schema([f for f in schema if f.name not in private])
    pii = out / "pii.parquet"
    if not private:
        pii.unlink(missing_ok=True)  # a previous run's personal data must not outlive its declaration
    with contextlib.ExitStack() as stack:
        main = stack.enter_context(ParquetStreamWriter(out / "customers.parquet", public))
        personal = stack.enter_context(ParquetStreamWriter(pii, pa.schema([schema.field(c) for c in ["customer_id", *private]]))) \
            if private else None
        start = 0
        for batch in source.iter_batches(batch_size=batch_size):
            table = pa.Table.from_batches([batch]).filter(pa.array(keep[start:start + batch.num_rows]))
            start += batch.num_rows
            main.write(table.drop_columns(private))
            if personal is not None:
                personal.write(table.select(["customer_id", *private]))


def _private_columns(spec: CustomersSpec, raw: pa.RecordBatch, batch: _Batch,
                     report: TableReport) -> dict[str, pa.Array]:
    """The personal data columns as text and the consent column as a boolean (true/yes/1 only)."""
    columns = {}
    for name in spec.pii:
        values, repaired = convert.to_string(raw.column(name))
        report.repaired_utf8 += repaired
        columns[name] = values
    if spec.consent:
        values, bad = _to_label(raw.column(spec.consent))
        _fail_on(bad, batch, "expected a consent value such as true/false, yes/no or 1/0 (blank: no consent)",
                 spec.consent, "data.customers.consent")
        columns[spec.consent] = pc.fill_null(pc.equal(values, 1.0), False)
    return columns


def _order_key(arr: pa.Array, batch: _Batch, column: str, kinds: set[str]) -> np.ndarray:
    """``customers.order_by`` as float64 (NaN when missing): numbers, or timestamps in microseconds."""
    kind = "timestamp"
    if not (pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type)):
        values, bad = convert.to_float(arr)
        kind = "number" if not bad.any() else kind
    if kind == "timestamp":
        ts, bad = convert.to_timestamp(arr)
        _fail_on(bad, batch, "expected a number or a timestamp to order duplicate customers by", column,
                 "data.customers.order_by")
        values = ts.cast(pa.int64())
    if values.null_count < len(values):
        kinds.add(kind)
    if len(kinds) > 1:
        raise UserInputError("the order_by column holds numbers in some rows and timestamps in others",
                             table="customers", column=column, config_key="data.customers.order_by")
    return values.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def _duplicate_customers(ids: pa.Array, rows: np.ndarray, order: np.ndarray | None, spec: CustomersSpec,
                         policy: str, kept: list[tuple[_Batch, pa.Array]], rejects: _Rejects,
                         report: TableReport) -> np.ndarray:
    """Stop on duplicate customer ids, or keep one row each (``first``/``last``) and reject the others.

    Returns the mask of the rows kept.
    """
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if not len(dup):
        return np.ones(len(ids), dtype=bool)
    if policy == "error":
        shown = [f"customer_id={v['values']!r} appears {v['counts']} times" for v in dup.to_pylist()[:MAX_ROWS_SHOWN]]
        raise UserInputError(f"{len(dup)} duplicate customer id(s): each customer must have one row (or set "
                             "data.policy.duplicate_customer to first or last to keep one row each)",
                             table="customers", column=spec.customer_id, rows=shown,
                             config_key="data.customers.columns.customer_id")
    keep = _keep_one(ids, rows, order, last=policy == "last")
    by = f"by {spec.order_by}" if spec.order_by else "in row order"
    reason = f"duplicate customer: kept the {policy} {by}"
    dropped = rows[~keep]
    for batch, ids in kept:
        in_batch = np.isin(batch.offset + np.arange(batch.raw.num_rows), dropped)
        report.rejected[reason] += rejects.add(batch, in_batch, reason, ids)
    log.info("customers: %d rows of %d duplicated ids set aside, %s", len(dropped), len(dup),
             reason.removeprefix("duplicate customer: "))
    return keep


def _keep_one(ids: pa.Array, rows: np.ndarray, order: np.ndarray | None, *, last: bool) -> np.ndarray:
    """Mask of the one row kept per customer id: the first (or last) by ``order``, then by row.

    A missing ``order`` value never wins over a present one; the kept rows stay in row order.
    """
    codes = pc.dictionary_encode(ids).indices.to_numpy(zero_copy_only=False)
    order = np.zeros(len(rows)) if order is None else order
    missing = np.isnan(order)
    value = np.where(missing, 0.0, order)
    sign = -1 if last else 1
    idx = np.lexsort((sign * rows, sign * value, missing, codes))
    first = np.ones(len(idx), dtype=bool)
    first[1:] = codes[idx][1:] != codes[idx][:-1]
    keep = np.zeros(len(rows), dtype=bool)
    keep[idx[first]] = True
    return keep


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def _to_label(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    values, bad = convert.to_float(arr)
    if not bad.any():
        return values, bad
    strings = pc.utf8_lower(pc.utf8_trim_whitespace(convert.to_string(arr)[0])).to_pylist()
    out, bad = [], np.zeros(len(strings), dtype=bool)
    for i, s in enumerate(strings):
        if s is None or s == "":
            out.append(None)
        elif s in _TRUE:
            out.append(1.0)
        elif s in _FALSE:
            out.append(0.0)
        else:
            try:
                out.append(float(s))
            except ValueError:
                out.append(None)
                bad[i] = True
    return pa.array(out, pa.float64()), bad


# ------------------------------------------------------------------------------------------- events


def _event_source_columns(spec: EventsSpec) -> list[str]:
    cols = [c for c in spec.columns.values() if c]
    if spec.event_type_rule and spec.event_type_rule.column:
        cols.append(spec.event_type_rule.column)
    cols += spec.amount_product or []
    cols += list(spec.extra_columns.values())
    cols += list(spec.numeric_attributes.values()) + list(spec.categorical_attributes.values())
    return list(dict.fromkeys(cols))


def _event_types(spec: EventsSpec, raw: pa.RecordBatch, amount: pa.Array, batch: _Batch) -> pa.Array:
    n = raw.num_rows
    if spec.columns["event_type"]:
        types, _ = convert.to_string(raw.column(spec.columns["event_type"]))
        _fail_on(_null_mask(types), batch, "missing event type", spec.columns["event_type"],
                 "data.events.columns.event_type")
        return types
    rule = spec.event_type_rule
    if rule.constant:
        types = pa.array(np.full(n, rule.constant, dtype=object), pa.string())
        default = rule.constant
    else:
        col, _ = convert.to_string(raw.column(rule.column))
        starts = pc.fill_null(pc.starts_with(col, rule.prefix), False)
        types = pc.if_else(starts, rule.match, rule.otherwise)
        default = rule.otherwise
    if spec.negative_amount_type:
        # Returns show up as negative amounts in most transaction logs; a type set by the rule's
        # match (e.g. cancellation) is kept.
        negative = pc.fill_null(pc.less(amount, 0), False)
        types = pc.if_else(pc.and_(negative, pc.equal(types, default)), spec.negative_amount_type, types)
    return types


def _event_amount(spec: EventsSpec, raw: pa.RecordBatch, batch: _Batch) -> pa.Array:
    names = spec.amount_product or ([spec.columns["amount"]] if spec.columns["amount"] else [])
    if not names:
        return pa.nulls(raw.num_rows, pa.float64())
    amount = None
    for name in names:
        values, bad = convert.to_float(raw.column(name))
        key = "data.events.amount_product" if spec.amount_product else "data.events.columns.amount"
        _fail_on(bad, batch, "expected a number", name, key)
        amount = values if amount is None else pc.multiply(amount, values)
    finite = pc.fill_null(pc.is_finite(amount), True)
    _fail_on(~_mask(finite), batch, "amount must be finite (NaN or infinity found)", names[0],
             "data.events.columns.amount")
    return amount


def _validate_events(spec: EventsSpec, batch_size: int, out: Path, rejects: _Rejects,
                     mapping: DataMapping, known_ids: pa.Array | None, show: bool,
                     db: SourceDatabase | None = None):
    key = "data.events"
    source = _event_source_columns(spec)
    batches = _open(spec.file, "events", source, batch_size, key, db)
    report = TableReport()
    policy = mapping.policy
    tally = _UnknownIds("events")
    finder = RepeatFinder(out, int(mapping.memory_mb * 2**20))
    attr_counts: dict[str, list[pa.Table]] = {}
    pass1 = out / ".events.pass1.parquet"
    schema = pa.schema(list(EVENTS) + [(name, pa.string()) for name in spec.extra_columns])
    bar = progress_bar(show, desc="validate events", unit="rows")
    try:
        with ParquetStreamWriter(pass1, schema) as writer:
            for batch in batches:
                raw = batch.raw
                report.rows_read += raw.num_rows
                ids = convert.to_customer_id(raw.column(spec.columns["customer_id"]))
                keep = _apply_policy(policy.missing_customer_id, _null_mask(ids), batch, "missing customer_id",
                                     spec.columns["customer_id"], "data.policy.missing_customer_id", rejects, ids, report)
                if known_ids is not None:
                    keep &= _unknown_customers(batch, ids, keep, known_ids, policy.unknown_customer,
                                               spec.columns["customer_id"], rejects, report, tally)
                ts = _timestamps(raw.column(spec.columns["timestamp"]), spec.timestamp_format, spec.timestamp_unit,
                                 batch, spec.columns["timestamp"], key)
                _fail_on(keep & _null_mask(ts), batch, "missing timestamp", spec.columns["timestamp"],
                         f"{key}.columns.timestamp")
                amount = _event_amount(spec, raw, batch)
                columns = {
                    "customer_id": ids,
                    "timestamp": ts,
                    "event_type": _event_types(spec, raw, amount, batch),
                    "amount": amount,
                }
                for name in ("category", "channel"):
                    src = spec.columns[name]
                    columns[name] = convert.to_string(raw.column(src))[0] if src else pa.nulls(raw.num_rows, pa.string())
                for name, src in spec.extra_columns.items():
                    values, repaired = convert.to_string(raw.column(src))
                    report.repaired_utf8 += repaired
                    columns[name] = values
                part = pa.table(columns).filter(pa.array(keep))
                writer.write(part)
                finder.add(convert.hash_rows([part[c].combine_chunks() for c in part.column_names]))
                if known_ids is None:
                    _count_attributes(spec, raw, ids, keep, attr_counts)
                bar.update(raw.num_rows)
    except BaseException:
        finder.close()  # its spill files, when a batch stops the job
        raise
    bar.close()
    with finder:
        if tally.mismatched():
            pass1.unlink(missing_ok=True)
            written = rejects.write(out / "rejects")
            raise tally.error(known_ids, written.get("events"))
        if writer.rows == 0:
            pass1.unlink(missing_ok=True)
            raise UserInputError(f"no usable events in {_where(spec.file)} (the table is empty or every row was "
                                 "rejected; see the rejects folder)", table="events",
                                 config_key=_input_key(spec.file, key))
        duplicates = finder.repeats()
    final = out / "events.parquet"
    if len(duplicates):
        _handle_duplicate_events(pass1, final, duplicates, policy.duplicate_event, rejects, report, batch_size)
    else:
        pass1.replace(final)
    report.rows_kept = writer.rows - len(duplicates)
    return report, attr_counts


def _unknown_customers(batch: _Batch, ids: pa.Array, keep: np.ndarray, known_ids: pa.Array, policy: str,
                       column: str, rejects: _Rejects, report: TableReport, tally: _UnknownIds) -> np.ndarray:
    """Keep-mask after the unknown-customer policy; a batch of (nearly) only strangers means mismatched ids."""
    unknown = keep & ~_mask(pc.is_in(ids, value_set=known_ids))
    tally.add(ids, keep, unknown)
    if policy == "error" and tally.mismatched():
        raise tally.error(known_ids, None)
    return _apply_policy(policy, unknown, batch, "unknown customer", column, "data.policy.unknown_customer",
                         rejects, ids, report)


def _count_attributes(spec: EventsSpec, raw: pa.RecordBatch, ids: pa.Array, keep: np.ndarray,
                      attr_counts: dict[str, list[pa.Table]]) -> None:
    """Per batch, count (customer, value) pairs of each attribute column taken from events."""
    attributes = {**spec.numeric_attributes, **spec.categorical_attributes}
    for name, src in attributes.items():
        values = convert.to_string(raw.column(src))[0]
        t = pa.table({"customer_id": ids, "value": values}).filter(pa.array(keep))
        attr_counts.setdefault(name, []).append(t.group_by(["customer_id", "value"]).aggregate([([], "count_all")]))


def _handle_duplicate_events(pass1: Path, final: Path, duplicates: np.ndarray, policy: str,
                             rejects: _Rejects, report: TableReport, batch_size: int) -> None:
    """Stop on duplicate events, or set them aside; ``duplicates`` are sorted rows of ``pass1``."""
    pf = pq.ParquetFile(pass1)
    try:
        if policy == "error":
            idx = duplicates[:MAX_ROWS_SHOWN]
            shown = [f"validated row {int(i)}: {r}" for i, r in zip(idx, _rows_at(pf, idx), strict=True)]
            raise UserInputError(
                f"{len(duplicates)} duplicate event(s) (same customer, time, type, amount and other "
                "columns as an earlier row); set the policy to 'reject' to set them aside",
                table="events", rows=shown, config_key="data.policy.duplicate_event")
        offset = 0
        with ParquetStreamWriter(final, pf.schema_arrow) as writer:
            for raw in pf.iter_batches(batch_size=batch_size):
                dup = np.zeros(raw.num_rows, dtype=bool)
                lo, hi = np.searchsorted(duplicates, [offset, offset + raw.num_rows])
                dup[duplicates[lo:hi] - offset] = True
                batch = _Batch("events", raw, offset)
                report.rejected["duplicate event"] += rejects.add(batch, dup, "duplicate event", raw.column("customer_id"))
                writer.write(pa.Table.from_batches([raw]).filter(pa.array(~dup)))
                offset += raw.num_rows
    finally:
        pass1.unlink(missing_ok=True)


def _rows_at(pf: pq.ParquetFile, rows: np.ndarray) -> list[dict[str, Any]]:
    """The given sorted rows of a Parquet file as dicts, reading only the row groups that hold them."""
    out, start = [], 0
    for group in range(pf.num_row_groups):
        size = pf.metadata.row_group(group).num_rows
        inside = rows[(rows >= start) & (rows < start + size)] - start
        if len(inside):
            out.extend(pf.read_row_group(group).take(pa.array(inside)).to_pylist())
        start += size
    return out


def _derive_customers(out: Path, spec: EventsSpec, attr_counts: dict[str, list[pa.Table]]) -> tuple[pa.Array, dict]:
    """Customers are the distinct ids of the kept events; attributes are each one's most frequent value."""
    # distinct ids row group by row group: memory grows with the customers, not the events
    events = pq.ParquetFile(out / "events.parquet")
    seen, parts, pending = pa.array([], events.schema_arrow.field("customer_id").type), [], 0
    for group in range(events.num_row_groups + 1):
        if group < events.num_row_groups:
            parts.append(pc.unique(events.read_row_group(group, columns=["customer_id"])["customer_id"]))
            pending += len(parts[-1])
        # merged once the pending ids outgrow those seen: linear in the events, not quadratic
        if parts and (pending > max(len(seen), 1 << 20) or group == events.num_row_groups):
            seen, parts, pending = pc.unique(pa.chunked_array([seen, *parts])), [], 0
    unique = pc.take(seen, pc.sort_indices(seen))
    columns: dict[str, pa.Array] = {"customer_id": unique}
    for name, parts in attr_counts.items():
        counts = pa.concat_tables(parts).group_by(["customer_id", "value"]).aggregate([("count_all", "sum")])
        # most frequent value per customer; ties go to the smallest value for determinism
        counts = counts.sort_by([("customer_id", "ascending"), ("count_all_sum", "descending"), ("value", "ascending")])
        cid = counts["customer_id"].combine_chunks()
        first = np.ones(len(cid), dtype=bool)
        if len(cid) > 1:
            first[1:] = _mask(pc.not_equal(cid[1:], cid[:-1]))
        best = counts.filter(pa.array(first))
        idx = pc.index_in(unique, value_set=best["customer_id"].combine_chunks())
        value = pc.take(best["value"].combine_chunks(), idx)
        if name in spec.numeric_attributes:
            value = convert.to_float(value)[0]
        columns[name] = value
    table = pa.table(columns)
    write_parquet(out / "customers.parquet", table)
    meta = {"numeric": list(spec.numeric_attributes), "categorical": list(spec.categorical_attributes), "labels": []}
    # customers derived from events have no personal data ("pii" absent from the schema: read it with .get)
    (out / "pii.parquet").unlink(missing_ok=True)
    return unique, meta


# -------------------------------------------------------------------------------------------- texts


def _validate_texts(spec: TextsSpec, batch_size: int, out: Path, rejects: _Rejects,
                    mapping: DataMapping, known_ids: pa.Array, show: bool,
                    db: SourceDatabase | None = None) -> TableReport:
    key = "data.texts"
    cols = [c for name, c in spec.columns.items() if c and name != "text"] + spec.text_sources
    source = list(dict.fromkeys(cols))
    batches = _open(spec.file, "texts", source, batch_size, key, db)
    report = TableReport()
    policy = mapping.policy
    tally = _UnknownIds("texts")
    text_column = spec.text_sources[0]
    bar = progress_bar(show, desc="validate texts", unit="rows")
    with ParquetStreamWriter(out / "texts.parquet", TEXTS) as writer:
        for batch in batches:
            raw = batch.raw
            n = raw.num_rows
            report.rows_read += n
            ids = convert.to_customer_id(raw.column(spec.columns["customer_id"]))
            keep = _apply_policy(policy.missing_customer_id, _null_mask(ids), batch, "missing customer_id",
                                 spec.columns["customer_id"], "data.policy.missing_customer_id", rejects, ids, report)
            keep &= _unknown_customers(batch, ids, keep, known_ids, policy.unknown_customer,
                                       spec.columns["customer_id"], rejects, report, tally)
            text = _text(raw, spec, report)
            rating = _rating(raw, spec, batch)
            empty = keep & ~_mask(pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False))
            # a rating says something even without words: keep the row, set only the empty text aside
            rated = empty & _mask(pc.is_valid(rating))
            if rated.any():
                report.dropped_values[EMPTY_TEXT_RATING_KEPT] += rejects.add(batch, rated, EMPTY_TEXT_RATING_KEPT, ids)
                text = pc.if_else(pa.array(rated), pa.nulls(n, pa.string()), text)
            keep &= _apply_policy(policy.empty_text, empty & ~rated, batch, "empty text", text_column,
                                  "data.policy.empty_text", rejects, ids, report)
            if spec.columns["timestamp"]:
                ts = _timestamps(raw.column(spec.columns["timestamp"]), spec.timestamp_format, spec.timestamp_unit,
                                 batch, spec.columns["timestamp"], key)
            else:
                ts = pa.nulls(n, EVENTS.field("timestamp").type)
            if spec.columns["source"]:
                src, _ = convert.to_string(raw.column(spec.columns["source"]))
                src = pc.fill_null(src, spec.source_constant or "unknown")
            else:
                src = pa.array(np.full(n, spec.source_constant, dtype=object), pa.string())
            part = pa.table({"customer_id": ids, "timestamp": ts, "source": src, "text": text, "rating": rating})
            writer.write(part.filter(pa.array(keep)))
            bar.update(n)
    bar.close()
    report.rows_kept = writer.rows
    if tally.mismatched():
        (out / "texts.parquet").unlink(missing_ok=True)
        written = rejects.write(out / "rejects")
        raise tally.error(known_ids, written.get("texts"))
    if report.rows_read == 0:
        raise UserInputError(f"{_where(spec.file)} has no rows (the table is empty)", table="texts",
                             config_key=_input_key(spec.file, key))
    return report


def _text(raw: pa.RecordBatch, spec: TextsSpec, report: TableReport) -> pa.Array:
    """The text of each row: one column, or the non-blank parts of ``text_columns`` joined."""
    parts = []
    for name in spec.text_sources:
        values, repaired = convert.to_string(raw.column(name))
        report.repaired_utf8 += repaired
        parts.append(values)
    if len(parts) == 1:
        return parts[0]
    joined = None
    for part in parts:
        blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(part)), 0), True)
        part = pc.if_else(blank, pa.nulls(len(part), pa.string()), part)
        if joined is None:
            joined = part
            continue
        # null when either side is null, then whichever side is present (a skipped part adds no separator)
        both = pc.binary_join_element_wise(joined, part, spec.text_separator)
        joined = pc.coalesce(both, joined, part)
    return joined


def _rating(raw: pa.RecordBatch, spec: TextsSpec, batch: _Batch) -> pa.Array:
    column = spec.columns["rating"]
    if not column:
        return pa.nulls(raw.num_rows, pa.float64())
    rating, bad = convert.to_float(raw.column(column))
    _fail_on(bad, batch, "expected a numeric rating", column, "data.texts.columns.rating")
    finite = pc.fill_null(pc.is_finite(rating), True)
    _fail_on(~_mask(finite), batch, "rating must be finite", column, "data.texts.columns.rating")
    return rating


# --------------------------------------------------------------------------------------------- main


def validate_tables(mapping: DataMapping, work_dir: str | Path, *, as_of: str | None = None,
                    roles: dict[str, list[str]] | None = None, progress: bool = False) -> dict[str, Any]:
    """Validate the mapped input tables and write the canonical tables to ``<work_dir>/validated``.

    Parameters
    ----------
    mapping : DataMapping
        Parsed ``data`` config.
    work_dir : path-like
        Project work directory.
    as_of : str, optional
        Observation cut-off, recorded in the schema for downstream jobs. With events, one before
        the first event is an error and one on or after the last a warning (nothing held out).
    roles : dict, optional
        Event-type roles (purchase, return, ...), recorded in the schema.
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        The validation report (also written to ``validated/validation.json``): ``n_customers``,
        per-table counts, rejects files, ``warnings`` and ``output_dir``.

    Notes
    -----
    Without events (``mapping.events`` None) no ``events.parquet`` is written (a stale one is
    removed) and ``schema.json`` has ``"events": null`` and no ``events`` in ``"tables"``.
    """
    out = validated_dir(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    rejects = _Rejects()
    warnings: list[str] = []
    with _open_sources(mapping, out) as db:
        reports, known, customer_meta, events_summary = _validate_all(mapping, out, rejects, db, as_of,
                                                                      warnings, progress)
    rejects_written = rejects.write(out / "rejects")
    schema = {
        "schema_version": SCHEMA_VERSION,
        "tables": sorted(reports),
        "customers": {**customer_meta, "derived_from_events": mapping.customers is None},
        "events": ({"extra_columns": list(mapping.events.extra_columns), **events_summary}
                   if mapping.events is not None else None),
        "texts": _texts_summary(out / "texts.parquet") if mapping.texts is not None else None,
        "as_of": as_of,
        "roles": roles,
    }
    write_json(out / "schema.json", schema)
    report = {
        "n_customers": len(known),
        "tables": {name: r.as_dict() for name, r in reports.items()},
        "rejects": rejects_written,
        "warnings": warnings,
        "output_dir": str(out),
    }
    write_json(out / "validation.json", report)
    return report


def _validate_all(mapping: DataMapping, out: Path, rejects: _Rejects, db: SourceDatabase | None,
                  as_of: str | None, warnings: list[str], progress: bool):
    """Validate customers, events and texts in that order (each later one checks ids against the first)."""
    if mapping.customers is None and mapping.events is None:
        raise ConfigError("there is neither an events nor a customers table", config_key="data.customers.path")
    reports: dict[str, TableReport] = {}
    known = None
    customer_meta: dict[str, Any] = {}
    events_summary = None
    attr_counts: dict[str, list[pa.Table]] = {}
    if mapping.customers is not None:
        known, reports["customers"], customer_meta = _validate_customers(
            mapping.customers, mapping.batch_size, out, rejects, mapping.policy, progress, db)
    if mapping.events is not None:
        reports["events"], attr_counts = _validate_events(mapping.events, mapping.batch_size, out, rejects,
                                                          mapping, known, progress, db)
        events_summary = _events_summary(out / "events.parquet")
        _check_as_of(as_of, events_summary, warnings)
    else:
        # customers-only data: a previous run's events must not pass for this run's
        (out / "events.parquet").unlink(missing_ok=True)
    if mapping.customers is None:
        known, customer_meta = _derive_customers(out, mapping.events, attr_counts)
        reports["customers"] = TableReport(rows_read=len(known), rows_kept=len(known))
        log.info("no customers table: %d customers derived from the events", len(known))
    (out / "texts.parquet").unlink(missing_ok=True)
    if mapping.texts is not None:
        reports["texts"] = _validate_texts(mapping.texts, mapping.batch_size, out, rejects, mapping, known,
                                           progress, db)
    return reports, known, customer_meta, events_summary


def _check_as_of(as_of: str | None, summary: dict[str, Any], warnings: list[str]) -> None:
    """``as_of`` before the first event is an error; on or after the last one leaves nothing held out."""
    if as_of is None:
        return
    try:
        cut = np.datetime64(str(as_of).strip().replace(" ", "T"), "us")
    except ValueError:
        raise ConfigError(f"data.as_of must be a date or timestamp such as 2024-06-30, got {as_of!r}",
                          config_key="data.as_of") from None
    first, last = summary["first"], summary["last"]
    span = f"the events run from {first} to {last}"
    if cut < np.datetime64(first.replace(" ", "T"), "us"):
        raise UserInputError(f"as_of {as_of} is before the first event: {span}. Set data.as_of within that "
                             "range (features use what happened before it, checks what came after)",
                             table="events", config_key="data.as_of")
    if cut >= np.datetime64(last.replace(" ", "T"), "us"):
        message = (f"as_of {as_of} is on or after the last event ({last}; {span}): nothing is held out after "
                   "it, so churn and value checks have no later events to measure (data.as_of)")
        log.warning(message)
        warnings.append(message)


def _add_counts(counts: Counter, values: pa.Array) -> None:
    for d in pc.value_counts(values).to_pylist():
        counts[d["values"]] += d["counts"]


def _events_summary(path: Path) -> dict[str, Any]:
    # batch by batch: the events table can be far larger than memory
    counts: Counter = Counter()
    bounds: list[Any] = []
    for batch in pq.ParquetFile(path).iter_batches(columns=["timestamp", "event_type"]):
        _add_counts(counts, batch.column("event_type"))
        mm = pc.min_max(batch.column("timestamp")).as_py()
        bounds.extend(v for v in (mm["min"], mm["max"]) if v is not None)
    return {"event_types": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
            "first": str(min(bounds)) if bounds else "None", "last": str(max(bounds)) if bounds else "None"}


def _texts_summary(path: Path) -> dict[str, Any]:
    counts: Counter = Counter()
    for batch in pq.ParquetFile(path).iter_batches(columns=["source"]):
        _add_counts(counts, batch.column("source"))
    return {"sources": dict(counts)}
