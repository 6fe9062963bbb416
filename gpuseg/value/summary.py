"""Per-customer BTYD summary (frequency, recency, T, monetary value) from the canonical events.

Conventions (those of ``lifetimes.utils.summary_data_from_transaction_data``):

* Purchases are events whose ``event_type`` plays the ``purchase`` role and whose amount is not
  negative (a negative amount is a return whatever its type, as in
  :mod:`gpuseg.features.rfm`). A null amount counts as 0 spend.
* A purchase *occasion* is a (customer, calendar day) pair: several purchases on one day (invoice
  lines, baskets) count as one, and their amounts add up to the occasion's spend. Days are UTC
  calendar days of the naive canonical timestamps.
* Calibration period: purchases with ``timestamp < as_of``. ``frequency`` = occasions - 1 (repeat
  occasions), ``recency`` = last occasion day - first occasion day, ``T`` = ``as_of`` - first
  occasion day (``as_of`` may fall within a day, then T is fractional), in ``time_unit`` (days, or
  weeks = days / 7). ``monetary_value`` = mean spend per *repeat* occasion (the first occasion is
  left out), 0 when frequency is 0.
* Customers without any purchase before ``as_of`` keep their row with NaN frequency, recency, T
  and monetary_value; :mod:`gpuseg.value.btyd` leaves them out of the fit and predicts NaN.
* Hold-out (when ``holdout_end`` is given): ``holdout_purchases`` = occasions with
  ``as_of <= timestamp < holdout_end`` (half-open like every window in gpuseg; pass the day after
  the last day to include it), for every customer (0 when none; also for customers first seen in
  the hold-out). ``holdout_length`` in the table metadata is ``holdout_end - as_of`` in
  ``time_unit``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.data.convert import as_customer_ids
from gpuseg.data.events import DEFAULT_ROLES, US_PER_DAY, format_instant, to_microseconds
from gpuseg.runtime.errors import ConfigError
from gpuseg.runtime.io import iter_table_batches

log = logging.getLogger(__name__)

_UNIT_DAYS = {"D": 1.0, "W": 7.0}
_COLUMNS = ["customer_id", "timestamp", "event_type", "amount"]

#: Output columns in order (``holdout_purchases`` only with ``holdout_end``).
SUMMARY_COLUMNS = ("customer_id", "frequency", "recency", "T", "monetary_value", "holdout_purchases")


def _purchase_types(roles: Mapping[str, Sequence[str]] | None) -> list[str]:
    if roles is None:
        return list(DEFAULT_ROLES["purchase"])
    if not isinstance(roles, Mapping) or not isinstance(roles.get("purchase", []), list | tuple):
        raise ConfigError("The 'roles' parameter must be a dict mapping 'purchase' to a list of "
                          f"event types. Got {roles!r} instead.")
    return list(roles.get("purchase", DEFAULT_ROLES["purchase"]))


def _read_purchases(events_path: Path, ids: pa.Array, types: list[str], end_us: int,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer index, timestamp us, amount) of the known customers' purchases before ``end_us``."""
    cust, ts, amt = [], [], []
    type_set = pa.array(types, type=pa.string())
    unknown = 0
    for batch in iter_table_batches(events_path, _COLUMNS, fmt="parquet", batch_size=batch_size):
        et = batch.column("event_type")
        if pa.types.is_dictionary(et.type):
            et = et.dictionary_decode()
        amount = batch.column("amount").cast(pa.float64()).to_numpy(zero_copy_only=False)
        amount = np.where(np.isfinite(amount), amount, 0.0)  # null / NaN spend counts as 0
        stamps = batch.column("timestamp").cast(pa.timestamp("us")).cast(pa.int64())
        stamps = stamps.fill_null(np.iinfo(np.int64).max).to_numpy()
        keep = pc.is_in(et, value_set=type_set).fill_null(False).to_numpy(zero_copy_only=False)
        keep &= (amount >= 0) & (stamps < end_us)
        if not keep.any():
            continue
        cid = batch.column("customer_id")
        if pa.types.is_dictionary(cid.type):
            cid = cid.dictionary_decode()
        idx = pc.index_in(cid.cast(pa.string()), value_set=ids).fill_null(-1).to_numpy()
        unknown += int((keep & (idx < 0)).sum())
        keep &= idx >= 0
        cust.append(idx[keep].astype(np.int64))
        ts.append(stamps[keep])
        amt.append(amount[keep])
    if unknown:
        log.warning("%d purchase(s) of customers absent from customer_ids were ignored", unknown)
    if not cust:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(cust), np.concatenate(ts), np.concatenate(amt)


def _occasions(cust: np.ndarray, day: np.ndarray, amount: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (customer, day) pairs sorted by customer then day, with the day's total spend."""
    if cust.size == 0:
        return cust, day, amount
    order = np.lexsort((day, cust))
    c, d, a = cust[order], day[order], amount[order]
    new = np.ones(c.size, dtype=bool)
    new[1:] = (c[1:] != c[:-1]) | (d[1:] != d[:-1])
    starts = np.flatnonzero(new)
    return c[starts], d[starts], np.add.reduceat(a, starts)


def btyd_summary(
    events_path: str | Path,
    customer_ids: Any,
    as_of: Any,
    *,
    roles: Mapping[str, Sequence[str]] | None = None,
    time_unit: str = "D",
    holdout_end: Any = None,
    batch_size: int = 262_144,
) -> pa.Table:
    """Summarise each customer's purchase history for BG/NBD and Gamma-Gamma.

    Parameters
    ----------
    events_path : path-like
        Canonical events Parquet (:data:`gpuseg.data.schema.EVENTS`).
    customer_ids : array-like of str
        Customers, one output row each in this order.
    as_of : str, date or datetime
        End of the calibration period (exclusive).
    roles : dict, optional
        Event-type roles; only ``roles["purchase"]`` is used (default ``["purchase"]``).
    time_unit : {"D", "W"}, default="D"
        Unit of recency, T and the hold-out length.
    holdout_end : str, date or datetime, optional
        End (exclusive) of the hold-out period ``[as_of, holdout_end)``; adds
        ``holdout_purchases``.
    batch_size : int, default=262144
        Events read per batch.

    Returns
    -------
    pyarrow.Table
        :data:`SUMMARY_COLUMNS` (float64 but ``customer_id``; ``holdout_purchases`` int64), with
        ``as_of``, ``time_unit``, ``holdout_end`` and ``holdout_length`` in the schema metadata.
        See the module notes for the conventions.
    """
    if time_unit not in _UNIT_DAYS:
        raise ConfigError(f"The 'time_unit' parameter must be one of {tuple(_UNIT_DAYS)}. Got "
                          f"{time_unit!r} instead.")
    ids = as_customer_ids(customer_ids)
    n = len(ids)
    as_of_us = to_microseconds(as_of)
    end_us = as_of_us
    if holdout_end is not None:
        end_us = to_microseconds(holdout_end)
        if end_us <= as_of_us:
            raise ConfigError(f"The 'holdout_end' parameter must be after as_of ({as_of}). Got "
                              f"{holdout_end!r} instead.")
    unit = _UNIT_DAYS[time_unit]
    cust, ts, amount = _read_purchases(Path(events_path), ids, _purchase_types(roles), end_us,
                                       int(batch_size))
    day = np.floor_divide(ts, US_PER_DAY)
    cal = ts < as_of_us

    # calibration occasions, sorted by customer then day
    oc, od, oa = _occasions(cust[cal], day[cal], amount[cal])
    frequency = np.full(n, np.nan)
    recency = np.full(n, np.nan)
    tenure = np.full(n, np.nan)
    monetary = np.full(n, np.nan)
    if oc.size:
        owners, first_idx, counts = np.unique(oc, return_index=True, return_counts=True)
        last_idx = first_idx + counts - 1
        first_day = od[first_idx].astype(np.float64)
        spend = np.add.reduceat(oa, first_idx)
        repeat_spend = spend - oa[first_idx]
        freq = (counts - 1).astype(np.float64)
        frequency[owners] = freq
        recency[owners] = (od[last_idx] - od[first_idx]) / unit
        tenure[owners] = (as_of_us / US_PER_DAY - first_day) / unit
        monetary[owners] = np.divide(repeat_spend, freq, out=np.zeros_like(freq), where=freq > 0)

    columns: dict[str, Any] = {
        "customer_id": ids,
        "frequency": frequency,
        "recency": recency,
        "T": tenure,
        "monetary_value": monetary,
    }
    meta = {"as_of": str(np.datetime64(as_of_us, "us")), "time_unit": time_unit}
    if holdout_end is not None:
        hc, _, _ = _occasions(cust[~cal], day[~cal], amount[~cal])
        columns["holdout_purchases"] = np.bincount(hc, minlength=n).astype(np.int64)
        meta["holdout_end"] = str(np.datetime64(end_us, "us"))
        meta["holdout_length"] = repr((end_us - as_of_us) / US_PER_DAY / unit)
    log.info("BTYD summary: %d customers, %d with purchases before %s", n, int(np.isfinite(frequency).sum()),
             format_instant(as_of_us))
    return pa.table(columns).replace_schema_metadata(meta)


#: the churn label derived from the events when the customers table has none
HOLDOUT_CHURN = "no_purchase_in_holdout"


def holdout_end_after(last_event: Any, as_of: Any) -> np.datetime64 | None:
    """End (exclusive) of the hold-out: the day after the last event, when the data reach past as_of.

    Parameters
    ----------
    last_event : str, datetime or None
        The last event's time (``schema.json``'s ``events.last``); None, "None" or "NaT": no events.
    as_of : str, date or datetime
        Start of the hold-out.

    Returns
    -------
    numpy.datetime64 or None
        Microsecond precision; None when no event falls after ``as_of``.
    """
    if last_event is None or str(last_event) in ("None", "NaT", ""):
        return None
    last = np.datetime64(str(last_event).replace(" ", "T"), "us")
    if last <= np.datetime64(to_microseconds(as_of), "us"):
        return None
    return (last.astype("datetime64[D]") + 1).astype("datetime64[us]")


def no_purchase_in_holdout(summary: pa.Table) -> np.ndarray | None:
    """1.0 for a customer who bought before as_of and not in the hold-out, 0.0 if they bought again.

    NaN for customers with no purchase before as_of (there is nothing to churn from); None when
    ``summary`` (from :func:`btyd_summary`) has no hold-out.
    """
    if "holdout_purchases" not in summary.column_names:
        return None
    t = summary["T"].to_numpy(zero_copy_only=False)
    held = summary["holdout_purchases"].to_numpy(zero_copy_only=False).astype(float)
    return np.where(np.isfinite(t), (held == 0).astype(float), np.nan)


def holdout_by_frequency(frequency: Any, predicted: Any, actual: Any, *, max_group: int = 7
                         ) -> list[dict[str, Any]]:
    """Mean predicted vs actual hold-out purchases by calibration frequency (FHL 2005, fig. 4).

    Parameters
    ----------
    frequency : array-like of shape (n_customers,)
        Calibration repeat purchases (NaN rows are left out).
    predicted, actual : array-like of shape (n_customers,)
        Predicted and actual hold-out purchases.
    max_group : int, default=7
        Frequencies ``>= max_group`` form the last group (``"7+"``).

    Returns
    -------
    list of dict
        One per group: ``frequency`` (label), ``n_customers``, ``mean_predicted``,
        ``mean_actual``, ``sum_predicted``, ``sum_actual``.
    """
    x = np.asarray(frequency, dtype=np.float64)
    pr = np.asarray(predicted, dtype=np.float64)
    ac = np.asarray(actual, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(pr) & np.isfinite(ac)
    group = np.minimum(x[ok], max_group).astype(np.int64)
    n = np.bincount(group, minlength=max_group + 1)
    sp = np.bincount(group, weights=pr[ok], minlength=max_group + 1)
    sa = np.bincount(group, weights=ac[ok], minlength=max_group + 1)
    rows = []
    for g in range(max_group + 1):
        rows.append({
            "frequency": f"{g}+" if g == max_group else str(g),
            "n_customers": int(n[g]),
            "mean_predicted": float(sp[g] / n[g]) if n[g] else float("nan"),
            "mean_actual": float(sa[g] / n[g]) if n[g] else float("nan"),
            "sum_predicted": float(sp[g]),
            "sum_actual": float(sa[g]),
        })
    return rows
