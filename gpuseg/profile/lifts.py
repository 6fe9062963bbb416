"""Per-segment sizes, feature means and lifts (z-scores), value concentration, representatives.

A lift is how far a segment's mean sits from the population mean, in population standard
deviations: ``lift_z = (mean_segment - mean_population) / std_population``. Using the population
spread (not a t-statistic) keeps lifts comparable between a segment of 50 and one of 50 000, which
is what a marketer reads ("recency 2.1 sd above average"). NaN values (undefined statistics such
as ``recency_days`` of a customer without purchases) are left out of both means.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.runtime.errors import UserInputError

log = logging.getLogger(__name__)

LIFTS_SCHEMA = pa.schema(
    [
        ("segment", pa.int32()),
        ("feature", pa.string()),
        ("mean", pa.float64()),
        ("population_mean", pa.float64()),
        ("population_std", pa.float64()),
        ("lift_z", pa.float64()),
    ]
)


def check_segments(segments, n_rows: int | None = None, *, name: str = "segments") -> np.ndarray:
    """Segment labels as a 1-D int64 array of non-negative values (checked against ``n_rows``)."""
    seg = np.asarray(segments)
    if seg.ndim != 1:
        raise UserInputError(f"The '{name}' parameter must be a 1-D array of segment labels, "
                             f"got an array of shape {seg.shape}.")
    if seg.size and not np.issubdtype(seg.dtype, np.integer):
        raise UserInputError(f"The '{name}' parameter must hold integer segment labels, "
                             f"got dtype {seg.dtype}.")
    seg = seg.astype(np.int64, copy=False)
    if seg.size and seg.min() < 0:
        raise UserInputError(f"The '{name}' parameter must hold non-negative segment labels, "
                             f"got {int(seg.min())}.")
    if n_rows is not None and seg.shape[0] != n_rows:
        raise UserInputError(f"The '{name}' parameter has {seg.shape[0]} labels but the data "
                             f"has {n_rows} rows; they must be aligned row by row.")
    return seg


def _n_segments(seg: np.ndarray, n_segments: int | None) -> int:
    found = int(seg.max()) + 1 if seg.size else 0
    if n_segments is None:
        return found
    if n_segments < found:
        raise UserInputError(f"The 'n_segments' parameter must be at least {found} (the largest "
                             f"label + 1), got {n_segments}.")
    return int(n_segments)


def segment_sizes(segments, n_segments: int | None = None) -> pa.Table:
    """Size and share of each segment.

    Parameters
    ----------
    segments : array of int, shape (n,)
        Segment label of each customer.
    n_segments : int, optional
        Number of segments (default: largest label + 1); empty segments get size 0.

    Returns
    -------
    pyarrow.Table
        ``segment`` (int32), ``size`` (int64), ``share`` (float64, sums to 1).
    """
    seg = check_segments(segments)
    k = _n_segments(seg, n_segments)
    size = np.bincount(seg, minlength=k)
    share = size / max(int(size.sum()), 1)
    return pa.table({"segment": pa.array(np.arange(k), pa.int32()), "size": pa.array(size, pa.int64()),
                     "share": pa.array(share, pa.float64())})


def _numeric_columns(features: pa.Table, columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return [f.name for f in features.schema
                if f.name != "customer_id" and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    missing = [c for c in columns if c not in features.column_names]
    if missing:
        raise UserInputError(f"The 'columns' parameter names columns missing from the features: "
                             f"{missing}; present: {features.column_names}.", table="features")
    return list(columns)


def categorical_indicators(features: pa.Table, columns: Sequence[str] | None = None, *,
                           max_values: int = 10, min_share: float = 0.01) -> pa.Table:
    """0/1 indicator columns ``"<column>=<value>"`` for the frequent values of categorical columns.

    Segments of a customers-only snapshot differ mostly in such attributes (contract type,
    region): as indicators their lifts are share differences, so personas can be named after them.

    Parameters
    ----------
    features : pyarrow.Table
        One row per customer.
    columns : sequence of str, optional
        Categorical columns (default: every string column except ``customer_id``).
    max_values : int, default=10
        Most frequent values kept per column.
    min_share : float, default=0.01
        Values held by a smaller share of customers are left out.

    Returns
    -------
    pyarrow.Table
        One float64 column per kept value (1.0 where the customer has it), same rows as ``features``.
    """
    if columns is None:
        columns = [f.name for f in features.schema if f.name != "customer_id"
                   and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
    out: dict[str, pa.Array] = {}
    n = max(features.num_rows, 1)
    for name in columns:
        values = features.column(name).combine_chunks().cast(pa.string())
        counts = sorted(pc.value_counts(values).to_pylist(), key=lambda d: (-d["counts"], str(d["values"])))
        for entry in counts[:max_values]:
            if entry["values"] is None or entry["counts"] / n < min_share:
                continue
            hit = pc.fill_null(pc.equal(values, entry["values"]), False)
            out[f"{name}={entry['values']}"] = hit.cast(pa.float64())
    return pa.table(out) if out else pa.table({})


def segment_lifts(features: pa.Table, segments, columns: Sequence[str] | None = None,
                  n_segments: int | None = None) -> pa.Table:
    """Mean of each feature per segment and its lift against the population, as a z-score.

    Parameters
    ----------
    features : pyarrow.Table
        One row per customer, aligned with ``segments``; numeric feature columns.
    segments : array of int, shape (n,)
        Segment label of each row.
    columns : sequence of str, optional
        Features to profile (default: every numeric column except ``customer_id``).
    n_segments : int, optional
        Number of segments (default: largest label + 1).

    Returns
    -------
    pyarrow.Table
        :data:`LIFTS_SCHEMA`: one row per (segment, feature), sorted by segment then by
        decreasing ``|lift_z|``. ``lift_z`` is 0 for a constant feature and NaN where the segment
        has no defined value.
    """
    seg = check_segments(segments, features.num_rows)
    k = _n_segments(seg, n_segments)
    cols = _numeric_columns(features, columns)
    blocks = []
    for name in cols:
        x = features.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(x)
        pop_mean = float(x[ok].mean()) if ok.any() else float("nan")
        pop_std = float(x[ok].std()) if ok.any() else float("nan")
        cnt = np.bincount(seg[ok], minlength=k).astype(np.float64)
        tot = np.bincount(seg[ok], weights=x[ok], minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = tot / cnt
        if pop_std > 0:
            lift = (mean - pop_mean) / pop_std
        else:  # a constant feature sets no segment apart
            lift = np.where(np.isfinite(mean), 0.0, np.nan)
        blocks.append((name, mean, pop_mean, pop_std, lift))
    rows: list[tuple] = []
    for s in range(k):
        seg_rows = [(s, name, float(mean[s]), pm, ps, float(lift[s]))
                    for name, mean, pm, ps, lift in blocks]
        seg_rows.sort(key=lambda r: -abs(r[5]) if np.isfinite(r[5]) else 1.0)
        rows.extend(seg_rows)
    arrays = [pa.array([r[i] for r in rows], type=f.type) for i, f in enumerate(LIFTS_SCHEMA)]
    return pa.Table.from_arrays(arrays, schema=LIFTS_SCHEMA)


def lifts_by_segment(lifts: pa.Table) -> dict[int, dict[str, float]]:
    """``segment -> {feature: lift_z}`` from a :func:`segment_lifts` table (NaN lifts dropped)."""
    out: dict[int, dict[str, float]] = {}
    for s, f, z in zip(lifts.column("segment").to_pylist(), lifts.column("feature").to_pylist(),
                       lifts.column("lift_z").to_pylist(), strict=True):
        d = out.setdefault(int(s), {})
        if z is not None and np.isfinite(z):
            d[f] = float(z)
    return out


def value_concentration(monetary, segments, n_segments: int | None = None) -> pa.Table:
    """Share of the total monetary value held by each segment.

    Parameters
    ----------
    monetary : array of float, shape (n,)
        Value per customer (e.g. ``monetary_net``); NaN counts as 0.
    segments : array of int, shape (n,)
    n_segments : int, optional

    Returns
    -------
    pyarrow.Table
        ``segment``, ``value`` (sum), ``value_share`` (of the total), ``size_share`` and
        ``concentration`` = ``value_share / size_share`` (above 1: the segment holds more than
        its head-count share of the value; NaN for an empty segment).
    """
    m = np.asarray(monetary, dtype=np.float64)
    seg = check_segments(segments, m.shape[0] if m.ndim == 1 else -1)
    k = _n_segments(seg, n_segments)
    m = np.where(np.isfinite(m), m, 0.0)
    value = np.bincount(seg, weights=m, minlength=k)
    total = value.sum()
    value_share = value / total if total != 0 else np.zeros(k)
    size_share = np.bincount(seg, minlength=k) / max(seg.size, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        conc = np.where(size_share > 0, value_share / size_share, np.nan)
    return pa.table({"segment": pa.array(np.arange(k), pa.int32()), "value": value,
                     "value_share": value_share, "size_share": size_share, "concentration": conc})


def segment_means(values, segments, n_segments: int | None = None) -> np.ndarray:
    """Mean of ``values`` per segment ignoring NaN (NaN where a segment has no finite value).

    Used for the mean rating, the churn rate (a 0/1 label), the mean churn score and the mean
    expected value.
    """
    v = np.asarray(values, dtype=np.float64)
    seg = check_segments(segments, v.shape[0] if v.ndim == 1 else -1)
    k = _n_segments(seg, n_segments)
    ok = np.isfinite(v)
    cnt = np.bincount(seg[ok], minlength=k)
    tot = np.bincount(seg[ok], weights=v[ok], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def representatives(distance, segments, n: int = 3, n_segments: int | None = None) -> dict[int, list[int]]:
    """Row indices of the ``n`` customers nearest their segment centre, per segment.

    Parameters
    ----------
    distance : array of float, shape (n_rows,)
        Distance of each customer to its own centre (``segments.parquet`` column ``distance``).
    segments : array of int, shape (n_rows,)
    n : int, default 3

    Returns
    -------
    dict
        ``segment -> [row index, ...]`` nearest first (ties broken by row order).
    """
    d = np.asarray(distance, dtype=np.float64)
    seg = check_segments(segments, d.shape[0] if d.ndim == 1 else -1)
    if not isinstance(n, int | np.integer) or n < 1:
        raise UserInputError(f"The 'n' parameter of representatives must be an int >= 1, got {n!r}.")
    k = _n_segments(seg, n_segments)
    d = np.where(np.isfinite(d), d, np.inf)
    order = np.lexsort((np.arange(seg.size), d, seg))  # by segment, then distance, then row
    starts = np.searchsorted(seg[order], np.arange(k))
    ends = np.searchsorted(seg[order], np.arange(k), side="right")
    return {s: order[starts[s]:min(ends[s], starts[s] + n)].tolist() for s in range(k)}
