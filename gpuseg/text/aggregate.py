"""Per-customer text blocks: mean, count and recency-weighted mean of text embeddings.

For every source (``review``, ``ticket``, whatever values the data has) and for ``all`` texts
together, each customer gets

- ``<s>_mean``: plain mean of their text embeddings,
- ``<s>_count``: number of texts,
- ``<s>_recency_mean``: mean weighted by ``0.5 ** (age_days / half_life_days)`` at ``as_of``,

plus ``has_text``. Customers with no text get zeros and ``has_text = False``: nobody is dropped,
so the block aligns row for row with the customers table. Sums are vectorised scatter-adds
(``torch.Tensor.index_add_``), one pass per block.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from gpuseg.data.events import US_PER_DAY, to_microseconds
from gpuseg.runtime.errors import ConfigError, UserInputError

log = logging.getLogger(__name__)


ALL = "all"


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
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise UserInputError(f"embeddings must be a 2-d array (n_texts, dim), got shape {emb.shape}")
    emb = emb.astype(np.float32, copy=False)
    n = emb.shape[0]
    n_customers = _check_n_customers(n_customers)
    cust = _check_index(customer_index, n, n_customers)
    ts = _to_microseconds(timestamps, n)
    half_life = float(half_life_days)
    if not np.isfinite(half_life) or half_life <= 0:
        raise ConfigError(
            f"half_life_days must be a positive number of days, got {half_life_days!r}",
            config_key="text.half_life_days",
        )

    valid_ts = ts != np.iinfo(np.int64).min
    as_of_us = _as_of_microseconds(as_of, ts[valid_ts])
    keep = ~(valid_ts & (ts > as_of_us))
    if skip_zero_rows:
        keep &= np.any(emb != 0, axis=1)
    age_days = np.where(valid_ts, (as_of_us - ts) / US_PER_DAY, np.inf)
    weights = np.where(valid_ts, np.exp2(-np.maximum(age_days, 0.0) / half_life), 0.0)

    src, order = _sources(sources, n, sources_order)
    out: dict[str, np.ndarray] = {}
    blocks = [(ALL, keep)] + [(s, keep & (src == s)) for s in order]
    emb_t = torch.from_numpy(np.ascontiguousarray(emb))
    for name, rows in blocks:
        sel = np.flatnonzero(rows)
        mean, count, recency = _block(emb_t, cust, weights, sel, n_customers)
        out[f"{name}_mean"] = mean
        out[f"{name}_count"] = count
        out[f"{name}_recency_mean"] = recency
    out["has_text"] = out[f"{ALL}_count"] > 0
    log.info(
        "aggregated %d texts (%d kept at as_of) into %d customers, %d with text, blocks %s",
        n,
        int(keep.sum()),
        n_customers,
        int(out["has_text"].sum()),
        [b for b, _ in blocks],
    )
    return out


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
    ids = customer_ids if isinstance(customer_ids, (pa.Array, pa.ChunkedArray)) else pa.array(
        np.asarray(customer_ids).astype(str) if len(customer_ids) else [], type=pa.string()
    )
    ids = ids.cast(pa.string())
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


def _block(
    emb: torch.Tensor, cust: np.ndarray, weights: np.ndarray, sel: np.ndarray, n_customers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, count and recency-weighted mean over the rows ``sel``."""
    dim = emb.shape[1]
    idx = torch.from_numpy(cust[sel])
    rows = emb[torch.from_numpy(sel)]
    count = np.bincount(cust[sel], minlength=n_customers).astype(np.int64)
    sums = torch.zeros((n_customers, dim), dtype=torch.float32).index_add_(0, idx, rows)
    w = torch.from_numpy(weights[sel].astype(np.float32))
    wsums = torch.zeros((n_customers, dim), dtype=torch.float32).index_add_(0, idx, rows * w[:, None])
    wtotal = np.bincount(cust[sel], weights=weights[sel], minlength=n_customers)
    mean = sums.numpy() / np.maximum(count, 1)[:, None].astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        recency = np.where(
            wtotal[:, None] > 0, wsums.numpy() / wtotal[:, None].astype(np.float32), 0.0
        ).astype(np.float32)
    return mean.astype(np.float32, copy=False), count, recency


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


def _sources(
    sources: Any, n: int, sources_order: Sequence[str] | None
) -> tuple[np.ndarray, list[str]]:
    if sources is None:
        if sources_order:
            raise UserInputError("sources_order was given but sources is None")
        return np.empty(n, dtype=object), []
    if isinstance(sources, (pa.Array, pa.ChunkedArray)):
        sources = sources.to_pylist()
    src = np.asarray(sources, dtype=object)
    if src.shape != (n,):
        raise UserInputError(f"sources must have shape ({n},) like embeddings, got {src.shape}")
    src = np.where(src == None, "", src).astype(str)  # noqa: E711 - elementwise null test
    order = sorted(set(src.tolist()) - {""}) if sources_order is None else [str(s) for s in sources_order]
    if len(set(order)) != len(order):
        raise UserInputError(f"sources_order has repeated names: {order}")
    if ALL in order:
        raise UserInputError(
            f"a text source is named '{ALL}', which is reserved for the block of all texts; "
            "rename that source value",
            table="texts",
            column="source",
        )
    return src, order
