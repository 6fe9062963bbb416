"""Customer event sequences: vocabularies fitted on training customers, padded step tensors.

Every customer's last ``max_len`` events before ``as_of`` become one left-aligned row of a
padded array; each step carries categorical codes (event type, category, channel, and any string
extra columns) and continuous values (signed log amount, log hours since the previous event,
log hours until ``as_of``). The build is vectorised: events are encoded batch by batch into
compact numpy columns, sorted once by (customer, time), and kept as an :class:`EventStore`
(each customer's last ``max_len`` steps, back to back, with offsets); any set of customers is
then scattered into padded arrays by position, so a job can assemble a few thousand customers
at a time instead of the padded arrays of everyone. No per-customer Python loop.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.data.convert import as_customer_ids
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import parquet_dataset, read_json, write_json
from gpuseg.runtime.progress import progress_bar

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PAD, UNK, NULL = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<unk>", "<null>")
DEFAULT_CATEGORICAL = ("event_type", "category", "channel")
CONTINUOUS = ("log_amount", "log_gap_hours", "log_hours_to_as_of")
GAP = CONTINUOUS.index("log_gap_hours")
_US_PER_HOUR = 3.6e9
_PREFIX = re.compile(r"^(?P<column>.+)\[:(?P<n>[1-9][0-9]*)\]$")
#: an extra column whose values each belong to one customer for this share of the events is an
#: identifier (an invoice or order id): new customers never share its values, so it is dropped
IDENTIFIER_SHARE = 0.9


def field_source(name: str) -> tuple[str, int | None]:
    """Column and prefix length of a field name: ``"stock_code[:3]"`` -> ``("stock_code", 3)``.

    A field written ``column[:n]`` uses the first ``n`` characters of the column's values, e.g.
    a product group from the leading digits of a stock code.
    """
    m = _PREFIX.match(name)
    return (m.group("column"), int(m.group("n"))) if m else (name, None)


def _field_values(batch: pa.RecordBatch, name: str) -> pa.Array:
    column, n = field_source(name)
    values = _as_string(batch.column(column))
    return values if n is None else pc.utf8_slice_codeunits(values, 0, n)


def _check_int(name: str, value: Any, low: int, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"The '{name}' parameter of {owner} must be an int >= {low}. "
                          f"Got {value!r} instead.")
    return int(value)


class Vocabulary:
    """String values -> integer codes, with ``<pad>`` = 0, ``<unk>`` = 1 and ``<null>`` = 2.

    Parameters
    ----------
    tokens : sequence of str
        Learned values in code order (codes start at 3); the special tokens are not included.
    """

    def __init__(self, tokens: Sequence[str]):
        self.tokens = [str(t) for t in tokens]
        self._values = pa.array(self.tokens, type=pa.string())

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], *, min_count: int = 1,
                    max_size: int | None = None) -> Vocabulary:
        """Keep values seen at least ``min_count`` times, most frequent first (ties by value)."""
        kept = sorted(((v, c) for v, c in counts.items() if c >= min_count), key=lambda vc: (-vc[1], vc[0]))
        if max_size is not None:
            kept = kept[:max_size]
        return cls([v for v, _ in kept])

    def __len__(self) -> int:
        """Number of codes, special tokens included."""
        return len(self.tokens) + len(SPECIAL_TOKENS)

    def encode(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Codes (int32) of ``values``: unseen values -> ``<unk>``, nulls -> ``<null>``."""
        values = _as_string(values)
        if len(self.tokens) == 0:
            codes = np.full(len(values), UNK, dtype=np.int32)
        else:
            idx = pc.index_in(values, value_set=self._values)
            codes = idx.fill_null(UNK - len(SPECIAL_TOKENS)).to_numpy(zero_copy_only=False).astype(np.int32)
            codes += len(SPECIAL_TOKENS)
        if values.null_count:
            codes[~values.is_valid().to_numpy(zero_copy_only=False)] = NULL
        return codes

    def decode(self, codes: np.ndarray) -> list[str]:
        """Token strings of ``codes``."""
        table = list(SPECIAL_TOKENS) + self.tokens
        return [table[int(c)] for c in np.asarray(codes).ravel()]


def _as_string(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if values.type != pa.string():
        values = values.cast(pa.string())
    return values


@dataclass
class Sequences:
    """Padded, left-aligned event sequences of a list of customers.

    Attributes
    ----------
    customer_ids : pyarrow.Array
        One string id per row.
    lengths : ndarray of int64, shape (n,)
        Steps used per customer (``min(n_events, max_len)``; 0 for customers without events).
    n_events : ndarray of int64, shape (n,)
        Events before ``as_of`` per customer (before truncation to ``max_len``).
    categorical : ndarray of int16 or int32, shape (n, max_len, n_categorical)
        Codes per step and field; 0 (``<pad>``) after the end of a sequence.
    continuous : ndarray of float32, shape (n, max_len, n_continuous)
        Raw (not normalised) continuous values per step, 0 after the end.
    categorical_names, continuous_names : list of str
        Field names, in the last-axis order of the arrays.
    vocab_sizes : list of int
        Codes per categorical field, special tokens included.
    """

    customer_ids: pa.Array
    lengths: np.ndarray
    n_events: np.ndarray
    categorical: np.ndarray
    continuous: np.ndarray
    categorical_names: list[str] = field(default_factory=list)
    continuous_names: list[str] = field(default_factory=list)
    vocab_sizes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        """Padded length of the arrays."""
        return int(self.categorical.shape[1])

    def subset(self, index: np.ndarray) -> Sequences:
        """The rows ``index`` (integer positions or a boolean mask), as a new Sequences."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return Sequences(
            customer_ids=self.customer_ids.take(pa.array(index, type=pa.int64())),
            lengths=self.lengths[index],
            n_events=self.n_events[index],
            categorical=self.categorical[index],
            continuous=self.continuous[index],
            categorical_names=list(self.categorical_names),
            continuous_names=list(self.continuous_names),
            vocab_sizes=list(self.vocab_sizes),
        )


class _RowIndex:
    """Customer id -> row of ``ids`` (the first one for a repeated id), hashed once.

    ``pc.index_in`` rebuilds its hash table of the value set on every call: with a million
    customers and one call per record batch that was most of the sequence build. Here the
    ids are hashed once, and a batch is looked up run by run (events usually come grouped by
    customer, so there are far fewer runs than rows; ungrouped input costs one lookup a row).
    """

    def __init__(self, ids: pa.Array):
        keys = ids.to_pylist()
        self._rows = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1), strict=True))

    def rows(self, column) -> np.ndarray:
        """Row of each value of ``column`` (int64), -1 for ids not in the index and nulls."""
        values = _as_string(column)
        n = len(values)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        starts = np.zeros(1, dtype=np.int64)
        if n > 1:
            change = pc.not_equal(values.slice(1), values.slice(0, n - 1)).fill_null(True)
            starts = np.concatenate([starts, np.flatnonzero(change.to_numpy(zero_copy_only=False)) + 1])
        get = self._rows.get
        keys = values.take(pa.array(starts)).to_pylist()
        mapped = np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        return np.repeat(mapped, np.diff(np.append(starts, n)))


@dataclass
class EventStore:
    """The steps of a list of customers, compact: each customer's last ``max_len`` steps back to back.

    What :class:`Sequences` holds, without the padding: ``codes`` and ``steps`` have one row
    per kept event (in customer, then time order), customer ``i``'s rows being
    ``offsets[i]:offsets[i + 1]``. :meth:`sequences` pads any subset of customers, so the
    padded arrays of everyone never have to exist at once.

    Attributes
    ----------
    customer_ids : pyarrow.Array
    lengths, n_events : ndarray of int64, shape (n,)
        As in :class:`Sequences`.
    offsets : ndarray of int64, shape (n + 1,)
    codes : ndarray of int16 or int32, shape (n_steps, n_categorical)
    steps : ndarray of float32, shape (n_steps, n_continuous)
    max_len : int
    categorical_names, continuous_names, vocab_sizes : list
        As in :class:`Sequences`.
    """

    customer_ids: pa.Array
    lengths: np.ndarray
    n_events: np.ndarray
    offsets: np.ndarray
    codes: np.ndarray
    steps: np.ndarray
    max_len: int
    categorical_names: list[str] = field(default_factory=list)
    continuous_names: list[str] = field(default_factory=list)
    vocab_sizes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lengths)

    def sequences(self, rows: np.ndarray | None = None) -> Sequences:
        """Padded sequences of the customers ``rows`` (integer positions, in that order; None = all)."""
        rows = np.arange(len(self), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        B, L = len(rows), int(self.max_len)
        out_row = np.repeat(np.arange(B, dtype=np.int64), lengths)
        pos = np.arange(len(out_row), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        src = np.repeat(self.offsets[rows], lengths) + pos
        categorical = np.zeros((B, L, self.codes.shape[1]), dtype=self.codes.dtype)
        categorical[out_row, pos] = self.codes[src]
        continuous = np.zeros((B, L, self.steps.shape[1]), dtype=np.float32)
        continuous[out_row, pos] = self.steps[src]
        return Sequences(
            customer_ids=self.customer_ids.take(pa.array(rows, type=pa.int64())),
            lengths=lengths,
            n_events=self.n_events[rows],
            categorical=categorical,
            continuous=continuous,
            categorical_names=list(self.categorical_names),
            continuous_names=list(self.continuous_names),
            vocab_sizes=list(self.vocab_sizes),
        )

    def chunks(self, size: int) -> Iterator[tuple[int, Sequences]]:
        """``(start, sequences)`` of consecutive customers, ``size`` at a time, in row order."""
        _check_int("size", size, 1, "EventStore.chunks")
        for start in range(0, len(self), size):
            yield start, self.sequences(np.arange(start, min(start + size, len(self))))


def count_events(events, customer_ids, *, as_of: int | None = None, batch_size: int = 1 << 20) -> np.ndarray:
    """Events before ``as_of`` per customer (int64, in the order of ``customer_ids``).

    A cheap pass (two columns) that tells how long every journey is before any vocabulary
    exists, e.g. to stratify a training sample by length.

    Parameters
    ----------
    events : pyarrow.Table or path-like
        Canonical events table (or its Parquet file).
    customer_ids : array-like of str
    as_of : int, optional
        Cut-off in microseconds since the epoch; None counts every event.
    batch_size : int
        Rows per record batch read.
    """
    ids = as_customer_ids(customer_ids)
    index = _RowIndex(ids)
    counts = np.zeros(len(ids), dtype=np.int64)
    cut = np.iinfo(np.int64).max if as_of is None else int(as_of)
    for batch in _iter_batches(events, ["customer_id", "timestamp"], batch_size):
        rows = index.rows(batch.column("customer_id"))
        rows = rows[(rows >= 0) & (_timestamps_us(batch.column("timestamp")) < cut)]
        counts += np.bincount(rows, minlength=len(ids))
    return counts


def _iter_batches(events, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    if isinstance(events, pa.Table):
        yield from events.select(columns).to_batches(max_chunksize=batch_size)
    elif isinstance(events, pa.RecordBatch):
        yield events.select(columns)
    else:
        # one batch at a time: the scanner's default read-ahead (16 batches) held well over a GB
        # of a 20M-event table in memory, for no gain on a couple of busy cores
        yield from parquet_dataset(events).to_batches(columns=columns, batch_size=batch_size, batch_readahead=1,
                                                      fragment_readahead=1)


def _event_columns(events) -> list[str]:
    if isinstance(events, (pa.Table, pa.RecordBatch)):
        return list(events.schema.names)
    import pyarrow.parquet as pq

    path = Path(events)
    first = path if not path.is_dir() else sorted(path.rglob("*.parquet"))[0]
    return list(pq.read_schema(first).names)


def _timestamps_us(col: pa.Array) -> np.ndarray:
    """int64 microseconds, nulls as int64 max (never before as_of)."""
    if not pa.types.is_timestamp(col.type) or col.type.unit != "us":
        col = col.cast(pa.timestamp("us", tz=getattr(col.type, "tz", None)))
    col = col.cast(pa.int64())
    if col.null_count:
        col = col.fill_null(np.iinfo(np.int64).max)
    return col.to_numpy(zero_copy_only=False)


def _customer_time_order(cust: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of events by (customer, time), and the sorted customer rows.

    Customer and time are packed into one int64 key and sorted once with torch's stable sort
    (several times faster than ``np.lexsort`` on tens of millions of rows). Time enters the key
    at the finest resolution that fits (µs, else ms, else s): events of one customer closer than
    that keep their file order. When not even seconds fit, time is sorted first, then customer.
    """
    import torch

    if len(cust) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    shifted = ts - int(ts.min())
    span = int(shifted.max())
    c_bits = max(int(cust.max()).bit_length(), 1)
    for unit in (1, 1000, 1_000_000):
        t_bits = max((span // unit).bit_length(), 1)
        if t_bits + c_bits <= 62:
            key = cust.astype(np.int64) << t_bits
            key |= shifted // unit if unit > 1 else shifted
            values, order = torch.sort(torch.from_numpy(key), stable=True)
            return order.numpy(), (values >> t_bits).numpy()
    by_time = torch.sort(torch.from_numpy(ts), stable=True).indices
    by_cust = torch.sort(torch.from_numpy(cust)[by_time], stable=True).indices
    order = by_time[by_cust].numpy()
    return order, cust[order].astype(np.int64)


class SequenceBuilder:
    """Turn the canonical events table into padded per-customer sequences.

    Parameters
    ----------
    max_len : int, default 100
        Steps kept per customer: the last ``max_len`` events before ``as_of``.
    as_of : int or None
        Cut-off in microseconds since the epoch (naive UTC); only events strictly before it are
        used. None uses every event and measures ``log_hours_to_as_of`` from the last event seen.
    categorical : sequence of str
        Categorical event columns; those absent from the table are skipped at fit.
    extra_columns : sequence of str
        Further string columns of the events table to use as categorical fields when present;
        ``column[:n]`` uses the first ``n`` characters of the column (e.g. ``stock_code[:3]``).
    drop_identifiers : bool, default True
        Skip extra columns whose values are per-customer identifiers (each value seen for one
        training customer only, for at least 90% of the events): an invoice id teaches nothing
        about new customers.
    min_count : int, default 1
        Values seen fewer times among the training customers' events map to ``<unk>``.
    max_vocab : int or None
        Most frequent values kept per field (special tokens excluded).
    batch_size : int
        Rows per record batch read.
    progress : bool
        Show a progress bar while reading.

    Attributes
    ----------
    vocabularies_ : dict of str -> Vocabulary
        One vocabulary per categorical field, in field order.
    as_of_us_ : int
        The cut-off used (the last event time + 1 µs when ``as_of`` was None at fit).
    """

    def __init__(self, *, max_len: int = 100, as_of: int | None = None,
                 categorical: Sequence[str] = DEFAULT_CATEGORICAL, extra_columns: Sequence[str] = (),
                 drop_identifiers: bool = True, min_count: int = 1, max_vocab: int | None = None, batch_size: int = 1 << 20,
                 progress: bool = False):
        self.max_len = max_len
        self.as_of = as_of
        self.categorical = categorical
        self.extra_columns = extra_columns
        self.drop_identifiers = drop_identifiers
        self.min_count = min_count
        self.max_vocab = max_vocab
        self.batch_size = batch_size
        self.progress = progress

    def _validate_params(self) -> None:
        owner = "SequenceBuilder"
        _check_int("max_len", self.max_len, 1, owner)
        _check_int("min_count", self.min_count, 1, owner)
        _check_int("batch_size", self.batch_size, 1, owner)
        if self.max_vocab is not None:
            _check_int("max_vocab", self.max_vocab, 1, owner)
        if self.as_of is not None:
            _check_int("as_of", self.as_of, -(2**62), owner)
        if "event_type" not in self.categorical:
            raise ConfigError("The 'categorical' parameter of SequenceBuilder must include 'event_type' "
                              f"(the prediction target). Got {list(self.categorical)!r} instead.")

    # ------------------------------------------------------------------------------------ fit
    def fit(self, events, customer_ids=None) -> SequenceBuilder:
        """Learn one vocabulary per categorical field from the events of ``customer_ids``.

        Parameters
        ----------
        events : pyarrow.Table or path-like
            Canonical events table (or its Parquet file).
        customer_ids : array-like of str, optional
            Training customers; None uses every customer's events.

        Returns
        -------
        self
        """
        self._validate_params()
        present = _event_columns(events)
        for col in ("customer_id", "timestamp", "event_type"):
            if col not in present:
                raise UserInputError(f"the events table has no '{col}' column", table="events", column=col)
        fields = [c for c in dict.fromkeys([*self.categorical, *self.extra_columns]) if field_source(c)[0] in present]
        extras = [c for c in fields if c not in self.categorical] if self.drop_identifiers else []
        sources = list(dict.fromkeys(field_source(c)[0] for c in fields))
        index = _RowIndex(as_customer_ids(customer_ids)) if customer_ids is not None else None
        counts = {name: Counter() for name in fields}
        owners: dict[str, list[pa.Table]] = {name: [] for name in extras}
        last = np.iinfo(np.int64).min
        for batch in _iter_batches(events, ["customer_id", "timestamp", *sources], self.batch_size):
            ts = _timestamps_us(batch.column("timestamp"))
            keep = ts < (self.as_of if self.as_of is not None else np.iinfo(np.int64).max)
            if index is not None:
                keep &= index.rows(batch.column("customer_id")) >= 0
            if not keep.any():
                continue
            last = max(last, int(ts[keep].max()))
            mask = pa.array(keep)
            for name in fields:
                values = _field_values(batch, name).filter(mask)
                for row in pc.value_counts(values.drop_null()).to_pylist():
                    counts[name][row["values"]] += row["counts"]
                if name in owners:
                    pairs = pa.table({"v": values, "c": _as_string(batch.column("customer_id")).filter(mask)})
                    owners[name].append(pairs.group_by(["v", "c"]).aggregate([]))
        if last == np.iinfo(np.int64).min:
            raise UserInputError("no events of the training customers before as_of: nothing to learn "
                                 "journeys from", table="events", column="timestamp")
        self.dropped_fields_ = [name for name in extras if _identifier_share(owners[name], counts[name])
                                >= IDENTIFIER_SHARE]
        if self.dropped_fields_:
            log.info("sequence fields %s dropped: their values are per-customer identifiers", self.dropped_fields_)
        fields = [f for f in fields if f not in self.dropped_fields_]
        self.fields_ = fields
        self.vocabularies_ = {name: Vocabulary.from_counts(counts[name], min_count=self.min_count,
                                                           max_size=self.max_vocab) for name in fields}
        self.as_of_us_ = int(self.as_of) if self.as_of is not None else last + 1
        log.info("sequence vocabularies: %s", {n: len(v) for n, v in self.vocabularies_.items()})
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "vocabularies_"):
            raise UserInputError("This SequenceBuilder instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")

    # ------------------------------------------------------------------------------ transform
    def transform(self, events, customer_ids) -> Sequences:
        """Padded sequences of ``customer_ids`` (in that order) from ``events``.

        Parameters
        ----------
        events : pyarrow.Table or path-like
            Canonical events table (or its Parquet file); rows of other customers are ignored.
        customer_ids : array-like of str
            Customers, one output row each (customers without events get length 0).

        Returns
        -------
        Sequences
        """
        return self.store(events, customer_ids).sequences()

    def store(self, events, customer_ids) -> EventStore:
        """The compact steps of ``customer_ids`` (in that order): :meth:`transform` without the padding.

        Takes the parameters of :meth:`transform`; returns an :class:`EventStore`, whose
        :meth:`EventStore.sequences` pads any of its customers (all of them is :meth:`transform`).
        """
        self._check_fitted()
        ids = as_customer_ids(customer_ids)
        present = _event_columns(events)
        missing = [c for c in self.fields_ if field_source(c)[0] not in present]
        if missing:
            raise UserInputError(f"the events table lacks the columns {missing} that the sequence "
                                 "vocabularies were fitted on", table="events", column=missing[0])
        t0 = time.perf_counter()
        columns = list(self._encode(events, ids))
        n_events = len(columns[0])
        t1 = time.perf_counter()
        store = self._compact(ids, columns)
        log.debug("sequences: encoded %d events in %.2fs, sorted in %.2fs", n_events, t1 - t0,
                  time.perf_counter() - t1)
        return store

    def _encode(self, events, ids: pa.Array):
        """Compact columns of the usable events: customer row, time, codes, signed log amount."""
        cols = ["customer_id", "timestamp", *dict.fromkeys(field_source(c)[0] for c in self.fields_)]
        has_amount = "amount" in _event_columns(events)
        if has_amount:
            cols.append("amount")
        parts: list[tuple] = []
        index = _RowIndex(ids)
        bar = progress_bar(self.progress, desc="sequences", unit="events")
        for batch in _iter_batches(events, cols, self.batch_size):
            bar.update(batch.num_rows)
            ts = _timestamps_us(batch.column("timestamp"))
            row = index.rows(batch.column("customer_id"))
            keep = (ts < self.as_of_us_) & (row >= 0)
            if not keep.any():
                continue
            mask = pa.array(keep)
            cust = row[keep].astype(np.int32)
            codes = np.stack([self.vocabularies_[name].encode(_field_values(batch, name).filter(mask))
                              for name in self.fields_], axis=1).astype(self._code_dtype())
            if has_amount:
                a = batch.column("amount").filter(mask).cast(pa.float64()).fill_null(0.0)
                a = a.to_numpy(zero_copy_only=False)
                amount = (np.sign(a) * np.log1p(np.abs(a))).astype(np.float32)
            else:
                amount = np.zeros(len(cust), dtype=np.float32)
            amount[~np.isfinite(amount)] = 0.0
            parts.append((cust, ts[keep], codes, amount))
        bar.close()
        if not parts:
            return (np.zeros(0, np.int32), np.zeros(0, np.int64),
                    np.zeros((0, len(self.fields_)), self._code_dtype()), np.zeros(0, np.float32))
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))

    def _code_dtype(self) -> type:
        max_code = max((len(v) for v in self.vocabularies_.values()), default=0)
        return np.int16 if max_code <= np.iinfo(np.int16).max else np.int32

    def _compact(self, ids: pa.Array, columns: list[np.ndarray]) -> EventStore:
        # the caller's list is emptied so that each raw column is freed as soon as it is replaced
        # (the peak memory of a 20M-event build is a handful of these columns)
        cust, ts, codes, amount = columns
        columns.clear()
        n, L, E = len(ids), int(self.max_len), len(cust)
        order, cust = _customer_time_order(cust, ts)
        ts = ts[order]
        counts = np.bincount(cust, minlength=n).astype(np.int64)
        lengths = np.minimum(counts, L)
        # position of each event from the start of its customer's kept steps; negative = older
        # than the last L events
        pos = np.arange(E, dtype=np.int64)
        pos -= np.repeat(np.cumsum(counts) - lengths, counts)
        keep = pos >= 0
        del pos
        prev = np.empty_like(ts)
        prev[1:] = ts[:-1]
        if E:
            prev[0] = ts[0]
        first = np.ones(E, dtype=bool)
        first[1:] = cust[1:] != cust[:-1]
        del cust
        prev[first] = ts[first]  # a customer's first event has no previous one: gap 0
        del first
        if not keep.all():
            ts, prev, src = ts[keep], prev[keep], order[keep]
        else:
            src = order
        del order, keep
        steps = np.empty((len(src), len(CONTINUOUS)), dtype=np.float32)
        steps[:, 0] = amount[src]
        del amount
        steps[:, 1] = np.log1p(np.maximum(ts - prev, 0) / _US_PER_HOUR)
        steps[:, 2] = np.log1p(np.maximum(self.as_of_us_ - ts, 0) / _US_PER_HOUR)
        return EventStore(
            customer_ids=ids,
            lengths=lengths,
            n_events=counts,
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            codes=codes[src],
            steps=steps,
            max_len=L,
            categorical_names=list(self.fields_),
            continuous_names=list(CONTINUOUS),
            vocab_sizes=[len(self.vocabularies_[f]) for f in self.fields_],
        )

    def fit_transform(self, events, customer_ids) -> Sequences:
        """Fit on the events of ``customer_ids`` and return their sequences."""
        return self.fit(events, customer_ids).transform(events, customer_ids)

    # ---------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters and fitted vocabularies."""
        self._check_fitted()
        return {
            "format_version": FORMAT_VERSION,
            "params": {"max_len": int(self.max_len), "as_of": self.as_of,
                       "categorical": list(self.categorical), "extra_columns": list(self.extra_columns),
                       "drop_identifiers": bool(self.drop_identifiers),
                       "min_count": int(self.min_count), "max_vocab": self.max_vocab,
                       "batch_size": int(self.batch_size)},
            "fields": list(self.fields_),
            "continuous": list(CONTINUOUS),
            "as_of_us": self.as_of_us_,
            "special_tokens": list(SPECIAL_TOKENS),
            "vocabularies": {name: v.tokens for name, v in self.vocabularies_.items()},
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> SequenceBuilder:
        """Rebuild a fitted builder from :meth:`to_dict` output."""
        if state.get("format_version") != FORMAT_VERSION:
            raise UserInputError(f"unsupported sequence builder format {state.get('format_version')!r}; "
                                 f"expected {FORMAT_VERSION}")
        builder = cls(**state["params"])
        builder.fields_ = list(state["fields"])
        builder.vocabularies_ = {name: Vocabulary(state["vocabularies"][name]) for name in builder.fields_}
        builder.as_of_us_ = int(state["as_of_us"])
        return builder

    def save(self, path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> SequenceBuilder:
        """Read a builder saved with :meth:`save`."""
        return cls.from_dict(read_json(path))


def _identifier_share(pairs: list[pa.Table], counts: Counter) -> float:
    """Share of a field's events whose value belongs to a single customer (0 when no events)."""
    total = sum(counts.values())
    if not pairs or total == 0:
        return 0.0
    distinct = pa.concat_tables(pairs).group_by(["v", "c"]).aggregate([])
    per_value = distinct.group_by("v").aggregate([("c", "count")])
    single = pc.filter(per_value["v"], pc.equal(per_value["c_count"], 1)).to_pylist()
    return sum(counts[v] for v in single if v is not None) / total


def load_builder(state: Mapping[str, Any], as_of_us: int | None = None) -> SequenceBuilder:
    """A fitted builder from its saved state, optionally moved to a new cut-off.

    The vocabularies stay the fitted ones (unseen values become ``<unk>``); only the cut-off
    (events kept, hours to as_of) moves.

    Parameters
    ----------
    state : dict
        :meth:`SequenceBuilder.to_dict` output (``vocabularies.json``).
    as_of_us : int, optional
        New cut-off in microseconds since the epoch; None keeps the fitted one.
    """
    if as_of_us is not None and isinstance(state, Mapping) and "params" in state:
        state = {**state, "params": {**state["params"], "as_of": int(as_of_us)}, "as_of_us": int(as_of_us)}
    return SequenceBuilder.from_dict(state)
