"""Per-customer text blocks: mean, count and recency-weighted mean of text embeddings.

For every source (``review``, ``ticket``, whatever values the data has) and for ``all`` texts
together, each customer gets

- ``<s>_mean``: plain mean of their text embeddings,
- ``<s>_count``: number of texts,
- ``<s>_recency_mean``: mean weighted by ``0.5 ** (age_days / half_life_days)`` at ``as_of``,

plus ``has_text``. Customers with no text get zeros and ``has_text = False``: nobody is dropped,
so the block aligns row for row with the customers table. Sums are vectorised scatter-adds
(``torch.Tensor.index_add_``). :func:`aggregate_parts` streams: the texts come as parts (one
embedding part file at a time) and the customers in ranges sized by a memory budget, so neither
the texts nor every customer's blocks are held at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from gpuseg.data.events import US_PER_DAY, to_microseconds
from gpuseg.runtime.errors import ConfigError, UserInputError

log = logging.getLogger(__name__)


ALL = "all"
_NO_TIME = np.iinfo(np.int64).min


@dataclass(frozen=True)
class TextPart:
    """One part of the texts: embeddings with each text's customer row, time and source.

    The fields take what :func:`aggregate_by_customer` takes for the whole set (``embeddings``
    may be a memory-mapped ``.npy``: only the rows in use are copied).
    """

    embeddings: np.ndarray
    customer_index: np.ndarray
    timestamps: Any
    sources: Any = None


def aggregate_by_customer(
    embeddings: np.ndarray,
    customer_index: np.ndarray,
    timestamps: np.ndarray,
    sources: np.ndarray | Sequence[str] | None,
    n_customers: int,
    *,
    as_of: Any = None,
    half_life_days: float = 90.0,
    sources_order: Sequence[str] | None = None,
    skip_zero_rows: bool = True,
) -> dict[str, np.ndarray]:
    """Aggregate text embeddings per customer and per source.

    Parameters
    ----------
    embeddings : ndarray of shape (n_texts, dim)
        One embedding per text (float32 is kept; other dtypes are cast).
    customer_index : ndarray of int, shape (n_texts,)
        Row of each text's customer in the customers table, in ``[0, n_customers)``.
    timestamps : ndarray of shape (n_texts,)
        ``datetime64`` or int64 microseconds since the epoch (the canonical ``timestamp[us]``).
        NaT keeps a text in the means and counts but gives it no recency weight.
    sources : array-like of str, shape (n_texts,), or None
        Source of each text; None gives only the ``all`` block.
    n_customers : int
        Number of customers (rows of every output array).
    as_of : datetime-like or int, optional
        Point in time of the features. Texts after it are left out of every aggregate (no
        leakage from the future); ages for the recency weights are measured from it. None
        takes the latest timestamp in the data.
    half_life_days : float, default=90.0
        Age at which a text's recency weight falls to one half.
    sources_order : sequence of str, optional
        Sources to make blocks for, in this order; None takes the distinct values, sorted.
        Texts whose source is not listed still count in ``all``.
    skip_zero_rows : bool, default=True
        Leave out rows of exact zeros: :class:`~gpuseg.text.TextEmbedder` returns them for
        empty texts, which say nothing and should neither count nor dilute a mean.

    Returns
    -------
    dict of str to ndarray
        ``has_text`` (bool, n_customers) and, for ``s`` in ``["all", *sources_order]``:
        ``<s>_mean`` and ``<s>_recency_mean`` (float32, (n_customers, dim)) and ``<s>_count``
        (int64, n_customers). Means are not re-normalised.

    See Also
    --------
    aggregate_parts : the same, streamed over parts and customer ranges (bounded memory).
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise UserInputError(f"embeddings must be a 2-d array (n_texts, dim), got shape {emb.shape}")
    n_customers = _check_n_customers(n_customers)
    part = TextPart(emb, customer_index, timestamps, sources)
    ((_, out),) = aggregate_parts(lambda: [part], n_customers, emb.shape[1], as_of=as_of,
                                  half_life_days=half_life_days, sources_order=sources_order,
                                  skip_zero_rows=skip_zero_rows, customer_rows=max(n_customers, 1))
    return out


def aggregate_parts(
    parts: Callable[[], Iterable[TextPart]],
    n_customers: int,
    dim: int,
    *,
    as_of: Any = None,
    half_life_days: float = 90.0,
    sources_order: Sequence[str] | None = None,
    skip_zero_rows: bool = True,
    customer_rows: int | None = None,
    memory_mb: float = 1024.0,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """:func:`aggregate_by_customer` streamed: parts read one at a time, customers in ranges.

    The sums of one range of customers are accumulated over every part, then that range's
    aggregates are given and the next range starts over the parts; no part is kept and the
    texts are never concatenated, so memory is one part plus one range's arrays, whatever the
    number of texts and customers. Results equal :func:`aggregate_by_customer` on the
    concatenated parts (up to float32 summation order).

    Parameters
    ----------
    parts : callable
        Returns a fresh iterable of :class:`TextPart` each call (it is called once per range,
        once more first when ``as_of`` or ``sources_order`` must be read from the data).
    n_customers : int
        Number of customers.
    dim : int
        Embedding width.
    as_of, half_life_days, sources_order, skip_zero_rows
        As for :func:`aggregate_by_customer`.
    customer_rows : int, optional
        Customers per range; None: as many as ``memory_mb`` holds.
    memory_mb : float, default=1024
        Memory for one range's sums and aggregates (about ``16 * dim`` bytes per customer and
        block), when ``customer_rows`` is None.

    Yields
    ------
    start : int
        Row of the range's first customer.
    aggregates : dict of str to ndarray
        The :func:`aggregate_by_customer` output for customers ``start:start + len``.
    """
    n_customers = _check_n_customers(n_customers)
    dim = int(dim)
    half_life = float(half_life_days)
    if not np.isfinite(half_life) or half_life <= 0:
        raise ConfigError(
            f"half_life_days must be a positive number of days, got {half_life_days!r}",
            config_key="text.half_life_days",
        )
    as_of_us, order = _scan(parts, n_customers, dim, as_of, sources_order)
    blocks = [ALL, *order]
    if customer_rows is None:
        customer_rows = int(memory_mb * 2**20 // (16 * dim * len(blocks) + 64))
    customer_rows = max(1, int(customer_rows))
    n_texts = n_kept = n_with_text = 0
    for c0 in range(0, max(n_customers, 1), customer_rows):
        c1 = min(n_customers, c0 + customer_rows)
        acc = {b: _Sums(c1 - c0, dim) for b in blocks}
        n_texts = 0
        for part in parts():
            emb, cust, ts, src = _part_arrays(part, n_customers, dim)
            n_texts += len(cust)
            valid = ts != _NO_TIME
            rows = np.flatnonzero(~(valid & (ts > as_of_us)) & (cust >= c0) & (cust < c1))
            x = np.ascontiguousarray(emb[rows], dtype=np.float32)
            if skip_zero_rows:
                nonzero = np.any(x != 0, axis=1)
                rows, x = rows[nonzero], x[nonzero]
            n_kept += len(rows)
            age_days = (as_of_us - ts[rows]) / US_PER_DAY
            w = np.where(valid[rows], np.exp2(-np.maximum(age_days, 0.0) / half_life), 0.0)
            idx = cust[rows] - c0
            acc[ALL].add(idx, x, w)
            for s in order if src is not None else ():
                m = src[rows] == s
                acc[s].add(idx[m], x[m], w[m])
            del part, emb, x  # the part (maybe a mapped file) goes before the next one is read
        out: dict[str, np.ndarray] = {}
        for b in blocks:
            out[f"{b}_mean"], out[f"{b}_count"], out[f"{b}_recency_mean"] = acc[b].means()
        out["has_text"] = out[f"{ALL}_count"] > 0
        n_with_text += int(out["has_text"].sum())
        del acc
        yield c0, out
        del out  # before the next range's arrays exist: peak memory is one range, not two
    log.info("aggregated %d texts (%d kept at as_of) into %d customers, %d with text, blocks %s",
             n_texts, n_kept, n_customers, n_with_text, blocks)


def customer_text_tables(
    parts: Callable[[], Iterable[TextPart]],
    customer_ids: Sequence[str] | np.ndarray | pa.Array,
    dim: int,
    **options: Any,
) -> Iterator[pa.Table]:
    """:func:`customer_text_table` of each range of :func:`aggregate_parts` (``options``), in customer order.

    At least one table is given (empty when there are no customers), so the first one's schema
    can open a streamed Parquet writer.
    """
    ids = _ids_array(customer_ids)
    for start, aggregates in aggregate_parts(parts, len(ids), dim, **options):
        table = customer_text_table(aggregates, ids.slice(start, len(aggregates["has_text"])))
        del aggregates  # the table holds its own copy; one range in memory at a time
        yield table
        del table


def customer_text_table(
    aggregates: dict[str, np.ndarray],
    customer_ids: Sequence[str] | np.ndarray | pa.Array,
    *,
    layout: str = "fixed_size_list",
) -> pa.Table:
    """Arrow table of :func:`aggregate_by_customer` output, keyed by ``customer_id``.

    Parameters
    ----------
    aggregates : dict of str to ndarray
        Output of :func:`aggregate_by_customer`.
    customer_ids : sequence of str, shape (n_customers,)
        Customer id of each row (cast to string, the canonical type).
    layout : {"fixed_size_list", "columns"}, default="fixed_size_list"
        ``fixed_size_list``: one ``fixed_size_list<float32>[dim]`` column per vector block,
        which Parquet stores as a list column that pandas, DuckDB and Spark read, and which
        turns back into a numpy matrix without a copy
        (``col.combine_chunks().values.to_numpy().reshape(-1, dim)``). ``columns``: one float32
        column per dimension (``<block>_000`` ...), for tools that want flat tables.

    Returns
    -------
    pyarrow.Table
        ``customer_id``, ``has_text``, then per block ``<s>_count``, ``<s>_mean`` and
        ``<s>_recency_mean`` in the order of ``aggregates``.
    """
    if layout not in ("fixed_size_list", "columns"):
        raise ConfigError(
            f"layout must be 'fixed_size_list' or 'columns', got {layout!r}", config_key="text.layout"
        )
    has_text = np.asarray(aggregates["has_text"], dtype=bool)
    ids = _ids_array(customer_ids)
    if len(ids) != len(has_text):
        raise UserInputError(
            f"customer_ids has {len(ids)} entries but the aggregates have {len(has_text)} customers"
        )
    columns: dict[str, pa.Array] = {"customer_id": ids, "has_text": pa.array(has_text)}
    for name, value in aggregates.items():
        if name == "has_text":
            continue
        value = np.asarray(value)
        if value.ndim == 1:
            columns[name] = pa.array(value)
        elif layout == "fixed_size_list":
            mat = np.ascontiguousarray(value, dtype=np.float32)
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])
        else:
            mat = np.asarray(value, dtype=np.float32)
            for k in range(mat.shape[1]):
                columns[f"{name}_{k:03d}"] = pa.array(mat[:, k])
    return pa.table(columns)


# ---------------------------------------------------------------------- helpers


def _ids_array(customer_ids: Any) -> pa.Array:
    """Customer ids as a string Arrow array."""
    ids = customer_ids if isinstance(customer_ids, (pa.Array, pa.ChunkedArray)) else pa.array(
        np.asarray(customer_ids).astype(str) if len(customer_ids) else [], type=pa.string()
    )
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    return ids.cast(pa.string())


class _Sums:
    """Per-customer sums of one block over a range of customers (float32 vectors, as the outputs)."""

    def __init__(self, rows: int, dim: int):
        self.sums = torch.zeros((rows, dim), dtype=torch.float32)
        self.wsums = torch.zeros((rows, dim), dtype=torch.float32)
        self.count = np.zeros(rows, dtype=np.int64)
        self.wtotal = np.zeros(rows, dtype=np.float64)

    def add(self, idx: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
        if not len(idx):
            return
        rows = len(self.count)
        t_idx, t_x = torch.from_numpy(idx), torch.from_numpy(x)
        self.sums.index_add_(0, t_idx, t_x)
        self.wsums.index_add_(0, t_idx, t_x * torch.from_numpy(w.astype(np.float32))[:, None])
        self.count += np.bincount(idx, minlength=rows)
        self.wtotal += np.bincount(idx, weights=w, minlength=rows)

    def means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, count and recency-weighted mean (zeros where there is no text or no weight)."""
        mean = self.sums.numpy() / np.maximum(self.count, 1)[:, None].astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            recency = np.where(
                self.wtotal[:, None] > 0, self.wsums.numpy() / self.wtotal[:, None].astype(np.float32), 0.0
            ).astype(np.float32)
        return mean.astype(np.float32, copy=False), self.count, recency


def _scan(parts: Callable[[], Iterable[TextPart]], n_customers: int, dim: int, as_of: Any,
          sources_order: Sequence[str] | None) -> tuple[int, list[str]]:
    """The cut-off in microseconds and the source blocks, with a pass over the parts when the data decides."""
    need_time = as_of is None
    if not need_time:
        as_of_us = _as_of_microseconds(as_of, np.zeros(0, np.int64))
    latest, names, any_sources = None, set(), False
    if need_time or sources_order is None:
        for part in parts():
            _, _, ts, src = _part_arrays(part, n_customers, dim)
            valid = ts[ts != _NO_TIME]
            if len(valid):
                latest = int(valid.max()) if latest is None else max(latest, int(valid.max()))
            if src is not None:
                any_sources = True
                names |= set(src.tolist()) - {""}
    else:
        any_sources = True
    if need_time:
        as_of_us = latest if latest is not None else 0
    if sources_order is None:
        order = sorted(names)
    elif not any_sources:
        raise UserInputError("sources_order was given but sources is None")
    else:
        order = [str(s) for s in sources_order]
    if len(set(order)) != len(order):
        raise UserInputError(f"sources_order has repeated names: {order}")
    if ALL in order:
        raise UserInputError(
            f"a text source is named '{ALL}', which is reserved for the block of all texts; "
            "rename that source value",
            table="texts",
            column="source",
        )
    return as_of_us, order


def _part_arrays(part: TextPart, n_customers: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """A part's embeddings (as given), customer rows, microsecond times and sources ('' for null), checked."""
    emb = part.embeddings if isinstance(part.embeddings, np.ndarray) else np.asarray(part.embeddings)
    if emb.ndim != 2 or emb.shape[1] != dim:
        raise UserInputError(f"embeddings must be a 2-d array (n_texts, {dim}), got shape {emb.shape}")
    n = emb.shape[0]
    cust = _check_index(part.customer_index, n, n_customers)
    ts = _to_microseconds(part.timestamps, n)
    return emb, cust, ts, _source_values(part.sources, n)


def _check_n_customers(n_customers: Any) -> int:
    if isinstance(n_customers, bool) or not isinstance(n_customers, (int, np.integer)) or n_customers < 0:
        raise UserInputError(f"n_customers must be a non-negative int, got {n_customers!r}")
    return int(n_customers)


def _check_index(customer_index: Any, n: int, n_customers: int) -> np.ndarray:
    cust = np.asarray(customer_index)
    if cust.shape != (n,):
        raise UserInputError(f"customer_index must have shape ({n},) like embeddings, got {cust.shape}")
    if n and not np.issubdtype(cust.dtype, np.integer):
        raise UserInputError(f"customer_index must hold integers, got dtype {cust.dtype}")
    cust = cust.astype(np.int64, copy=False)
    if n and (cust.min() < 0 or cust.max() >= n_customers):
        bad = np.flatnonzero((cust < 0) | (cust >= n_customers))[:5]
        raise UserInputError(
            f"customer_index must lie in [0, {n_customers}) (rows of the customers table); "
            f"text rows {bad.tolist()} have {cust[bad].tolist()}"
        )
    return cust


def _to_microseconds(timestamps: Any, n: int) -> np.ndarray:
    """int64 microseconds since the epoch; NaT/null becomes int64 min."""
    if isinstance(timestamps, (pa.Array, pa.ChunkedArray)):
        timestamps = timestamps.to_numpy(zero_copy_only=False)
    ts = np.asarray(timestamps)
    if ts.shape != (n,):
        raise UserInputError(f"timestamps must have shape ({n},) like embeddings, got {ts.shape}")
    if np.issubdtype(ts.dtype, np.datetime64):
        return ts.astype("datetime64[us]").astype(np.int64)
    if n and not np.issubdtype(ts.dtype, np.integer):
        raise UserInputError(
            f"timestamps must be datetime64 or int64 microseconds since the epoch, got dtype {ts.dtype}"
        )
    return ts.astype(np.int64, copy=False)


def _as_of_microseconds(as_of: Any, ts: np.ndarray) -> int:
    """The cut-off in microseconds: the last text's time when None, epoch microseconds as given."""
    if as_of is None:
        return int(ts.max()) if len(ts) else 0
    if isinstance(as_of, (int, np.integer)) and not isinstance(as_of, bool):
        return int(as_of)
    return to_microseconds(as_of)


def _source_values(sources: Any, n: int) -> np.ndarray | None:
    """Source of each text as str ('' for null), or None without sources."""
    if sources is None:
        return None
    if isinstance(sources, (pa.Array, pa.ChunkedArray)):
        sources = sources.to_pylist()
    src = np.asarray(sources, dtype=object)
    if src.shape != (n,):
        raise UserInputError(f"sources must have shape ({n},) like embeddings, got {src.shape}")
    return np.where(src == None, "", src).astype(str)  # noqa: E711 - elementwise null test
