"""RFM+ tabular features per customer, computed point-in-time from the canonical events table.

:class:`RFMFeaturizer` streams the events (and optionally texts) Parquet in Arrow batches, maps
each event's ``customer_id`` to its row in the given customer id array with
``pyarrow.compute.index_in`` and accumulates per-customer counts, sums, minima and maxima with
vectorised numpy scatter operations. Only the purchases are kept as two compact columns (int32
customer index, int64 timestamp) for the features that need per-customer ordering: distinct
purchase occasions and the gaps between them, obtained with one sort and no per-customer loop.

Conventions (all features are float64):

* Point in time: only events (and texts) with ``timestamp < as_of`` count, strictly before. Later
  rows never reach an accumulator, so they cannot change any feature.
* Roles: ``roles`` maps a role (``purchase``, ``return``, ``ticket``, ``review``) to the event types
  that play it. An event with a **negative amount is a return whatever its type** (real invoice
  data records returns as negative quantities) and is then never a purchase.
* Money: ``monetary_sum`` is the *gross* purchase amount; ``return_amount`` is the sum of the
  absolute amounts of returns; ``monetary_net = monetary_sum - return_amount``. ``monetary_mean``
  is ``monetary_sum`` per purchase occasion. Null or non-finite amounts count as 0.
* Occasions: ``frequency`` is the number of distinct purchase timestamps of a customer (invoice
  lines sharing a timestamp are one occasion); ``n_purchase_events`` counts the lines.
* Undefined statistics are NaN, counts are 0: ``recency_days``, ``monetary_mean`` (no purchase),
  ``tenure_days``, ``days_since_last_event`` (no event), the inter-purchase gap statistics (fewer
  than two occasions; the std is the population std, 0 for a single gap) and ``mean_rating`` (no
  rated text). A customer without events gets a row with these NaNs and zero counts.
* Trends: ``trend_<x> = (recent - previous) / (recent + previous)`` in [-1, 1] (0 when both are 0),
  recent = ``[as_of - W, as_of)``, previous = ``[as_of - 2W, as_of - W)``, for purchase occasions,
  gross spend and all events (activity).
* Shares: ``share_<attr>_<value>`` is the fraction of the customer's events whose event type /
  channel / category is that fitted top-N value, ``share_<attr>_other`` the fraction with another
  non-null value (events with a null value count in no share). Shares are 0 for a customer with no
  events (``n_events`` tells that case apart), so they never need imputation.
* Texts (when ``texts_path`` is given to fit and transform): ``n_texts``, ``n_texts_<source>`` for
  each source seen before ``as_of`` at fit, ``mean_rating`` over the rated texts.
* Column names are safe identifiers: values are lower-cased and every run of characters outside
  ``[a-z0-9]`` becomes ``_`` (``Home & Garden`` -> ``share_category_home_garden``).
* Events before ``as_of`` of customers absent from ``customer_ids`` are ignored and counted in
  ``stats_["events_unknown_customer"]`` (a warning is logged).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.data.convert import as_customer_ids
from gpuseg.data.events import DEFAULT_ROLES, US_PER_DAY, format_instant, to_microseconds  # noqa: F401  (re-exported)
from gpuseg.data.schema import EVENTS, TEXTS
from gpuseg.runtime.artifacts import check_state
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import (
    count_rows,
    detect_format,
    iter_table_batches,
    read_json,
    table_columns,
    write_json,
)
from gpuseg.runtime.progress import progress_bar

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_EVENT_COLUMNS = list(EVENTS.names)
_TEXT_COLUMNS = [c for c in TEXTS.names if c != "text"]  # the text itself is not needed here
_NO_TIME = np.iinfo(np.int64).max  # null timestamps become "never", hence never before as_of

#: Features that do not depend on the fitted vocabularies, in output order.
BASE_FEATURES = (
    "recency_days",
    "frequency",
    "n_purchase_events",
    "monetary_sum",
    "monetary_net",
    "monetary_mean",
    "tenure_days",
    "days_since_last_event",
    "n_events",
    "interpurchase_mean_days",
    "interpurchase_std_days",
    "interpurchase_median_days",
    "trend_purchases",
    "trend_spend",
    "trend_activity",
    "n_returns",
    "return_amount",
    "n_tickets",
    "n_reviews",
)


def sanitize_name(value: str) -> str:
    """Lower-case ``value`` and replace every run of non ``[a-z0-9]`` characters by ``_``."""
    text = re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_")
    return text or "value"


def _iso(us: int) -> str:
    return format_instant(us)


def _unique_names(prefix: str, values: Sequence[str], reserved: Iterable[str] = ()) -> list[str]:
    """Sanitised column names for ``values``; clashes get ``_2``, ``_3``... suffixes."""
    taken = set(reserved)
    names = []
    for value in values:
        base = sanitize_name(value)
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        names.append(prefix + name)
    return names


def _trend(recent: np.ndarray, previous: np.ndarray) -> np.ndarray:
    total = recent + previous
    out = np.zeros(total.shape, dtype=np.float64)
    np.divide(recent - previous, total, out=out, where=total > 0)
    return out


def _string_column(batch: pa.RecordBatch, name: str) -> pa.Array:
    col = batch.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if col.type != pa.string():
        col = col.cast(pa.string())
    return col


def _timestamps(batch: pa.RecordBatch) -> np.ndarray:
    """int64 microseconds of the ``timestamp`` column, null -> never."""
    col = batch.column("timestamp")
    if not pa.types.is_timestamp(col.type) or col.type.unit != "us" or col.type.tz is not None:
        col = col.cast(pa.timestamp("us"))
    col = col.cast(pa.int64())
    if col.null_count:
        col = col.fill_null(_NO_TIME)
    return col.to_numpy(zero_copy_only=False)


def _codes(values: pa.Array, vocab: pa.Array, n_vocab: int) -> np.ndarray:
    """Code per row: position in ``vocab``, ``n_vocab`` (other) if absent, ``n_vocab + 1`` if null."""
    if values.null_count == len(values):
        return np.full(len(values), n_vocab + 1, dtype=np.int64)
    codes = pc.index_in(values, value_set=vocab).fill_null(n_vocab).to_numpy(zero_copy_only=False)
    codes = codes.astype(np.int64)
    if values.null_count:
        codes[~values.is_valid().to_numpy(zero_copy_only=False)] = n_vocab + 1
    return codes


def _sorted_pairs(group: np.ndarray, value: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort ``(group, value)`` pairs by group then value; int64 values.

    When both fit in one int64 (after dividing the values by their common step, e.g. whole
    seconds) the pairs are packed into one key and sorted without a permutation, which is several
    times faster than ``np.lexsort``; otherwise ``np.lexsort`` is used.
    """
    if len(group) == 0:
        return group.astype(np.int64), value.astype(np.int64)
    vmin = int(value.min())
    shifted = value - vmin
    step = int(np.gcd.reduce(shifted)) or 1
    span = int(shifted.max()) // step
    v_bits = max(span.bit_length(), 1)
    g_bits = max(int(n_groups).bit_length(), 1)
    if v_bits + g_bits <= 62:
        scaled = shifted // step if step > 1 else shifted
        key = (group.astype(np.int64) << v_bits) | scaled
        key.sort()
        return key >> v_bits, (key & ((1 << v_bits) - 1)) * step + vmin
    order = np.lexsort((value, group))
    return group[order].astype(np.int64), value[order]


class RFMFeaturizer:
    """Point-in-time RFM+ features per customer from the canonical events (and texts) tables.

    Parameters
    ----------
    as_of : str, datetime.date, datetime.datetime or numpy.datetime64
        Reference time; only rows with ``timestamp < as_of`` count. Naive times are UTC; an aware
        datetime is converted to UTC.
    roles : dict of str to list of str, optional
        Event types playing each role among ``purchase``, ``return``, ``ticket``, ``review``.
        Given roles replace the defaults (``purchase``, ``return``, ``support_ticket``,
        ``review``); roles not given keep them. A type absent from the data just yields zeros.
    recent_window_days : float, default=90
        Window ``W`` of the trend features.
    top_n_event_types, top_n_channels, top_n_categories : int, default=10
        Number of most frequent values (before ``as_of``, at fit) that get a share column.
    batch_size : int, default=1_000_000
        Rows per Arrow batch read from the Parquet files.
    progress : bool, default=False
        Show a tqdm bar while streaming (only on a terminal).

    Attributes
    ----------
    event_types_, channels_, categories_ : list of str
        Fitted top-N vocabularies (most frequent first, ties by value).
    text_sources_ : list of str or None
        Text sources seen at fit (None when fitted without texts: no text features).
    feature_names_out_ : list of str
        Feature columns of :meth:`transform`'s output, after ``customer_id``.
    stats_ : dict
        Row counts of the last :meth:`transform` (read, after ``as_of``, unknown customer, used).
    """

    def __init__(
        self,
        *,
        as_of: Any,
        roles: Mapping[str, Sequence[str]] | None = None,
        recent_window_days: float = 90,
        top_n_event_types: int = 10,
        top_n_channels: int = 10,
        top_n_categories: int = 10,
        batch_size: int = 1_000_000,
        progress: bool = False,
    ):
        self.as_of = as_of
        self.roles = roles
        self.recent_window_days = recent_window_days
        self.top_n_event_types = top_n_event_types
        self.top_n_channels = top_n_channels
        self.top_n_categories = top_n_categories
        self.batch_size = batch_size
        self.progress = progress

    # ------------------------------------------------------------------ parameters
    def _validate_params(self) -> None:
        self._as_of_us = to_microseconds(self.as_of)
        self._roles = self._resolved_roles()
        w = self.recent_window_days
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0 < w < math.inf):
            raise ConfigError(
                "The 'recent_window_days' parameter of RFMFeaturizer must be a float in the range "
                f"(0, inf). Got {w!r} instead."
            )
        for name in ("top_n_event_types", "top_n_channels", "top_n_categories", "batch_size"):
            value = getattr(self, name)
            low = 1 if name == "batch_size" else 0
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(
                    f"The '{name}' parameter of RFMFeaturizer must be an int in the range "
                    f"[{low}, inf). Got {value!r} instead."
                )

    def _resolved_roles(self) -> dict[str, list[str]]:
        roles = {k: list(v) for k, v in DEFAULT_ROLES.items()}
        if self.roles is None:
            return roles
        if not isinstance(self.roles, Mapping):
            raise ConfigError(
                "The 'roles' parameter of RFMFeaturizer must be a dict mapping a role to a list "
                f"of event types. Got {self.roles!r} instead."
            )
        for role, types in self.roles.items():
            if role not in DEFAULT_ROLES:
                raise ConfigError(
                    f"The 'roles' parameter of RFMFeaturizer must have keys among "
                    f"{sorted(DEFAULT_ROLES)}. Got {role!r} instead."
                )
            if isinstance(types, str) or not all(isinstance(t, str) for t in types):
                raise ConfigError(
                    f"The 'roles' parameter of RFMFeaturizer must map '{role}' to a list of event "
                    f"type strings. Got {types!r} instead."
                )
            roles[role] = list(types)
        return roles

    # ------------------------------------------------------------------ fit
    def fit(self, events_path, texts_path=None) -> RFMFeaturizer:
        """Learn the top-N event types, channels and categories among events before ``as_of``.

        Parameters
        ----------
        events_path : path-like
            Canonical events Parquet file or folder.
        texts_path : path-like, optional
            Canonical texts table; when given, the text sources seen before ``as_of`` are learnt
            and :meth:`transform` then needs texts too.

        Returns
        -------
        self
        """
        self._validate_params()
        limit = pa.scalar(self._as_of_us, type=pa.timestamp("us"))
        counters = {"event_type": Counter(), "channel": Counter(), "category": Counter()}
        cols = ["timestamp", *counters]
        _check_columns(events_path, "events", cols)
        bar = self._bar(events_path, "fit events")
        before = _before(events_path, limit)  # pushed down to the Parquet reader: later rows are not read
        for batch in iter_table_batches(events_path, cols, batch_size=self.batch_size, filter=before):
            ts = batch.column("timestamp")
            if not pa.types.is_timestamp(ts.type) or ts.type.unit != "us" or ts.type.tz is not None:
                ts = ts.cast(pa.timestamp("us"))
            mask = pc.fill_null(pc.less(ts, limit), False)
            for name, counter in counters.items():
                _count_values(counter, pc.filter(_string_column(batch, name), mask))
            bar.update(batch.num_rows)
        bar.close()
        self.event_types_ = _top(counters["event_type"], self.top_n_event_types)
        self.channels_ = _top(counters["channel"], self.top_n_channels)
        self.categories_ = _top(counters["category"], self.top_n_categories)
        self.text_sources_ = None
        if texts_path is not None:
            sources = Counter()
            _check_columns(texts_path, "texts", ["timestamp", "source"])
            for batch in iter_table_batches(texts_path, ["timestamp", "source"], batch_size=self.batch_size,
                                            filter=_before(texts_path, limit)):
                mask = _timestamps(batch) < self._as_of_us
                _count_values(sources, pc.filter(_string_column(batch, "source"), pa.array(mask)))
            self.text_sources_ = sorted(sources)
        self.feature_names_out_ = self._feature_names()
        log.info(
            "RFMFeaturizer fitted at as_of=%s: %d event types, %d channels, %d categories",
            _iso(self._as_of_us),
            len(self.event_types_),
            len(self.channels_),
            len(self.categories_),
        )
        return self

    def _feature_names(self) -> list[str]:
        names = list(BASE_FEATURES)
        if self.text_sources_ is not None:
            names.append("n_texts")
            names += _unique_names("n_texts_", self.text_sources_)
            names.append("mean_rating")
        for prefix, vocab in (
            ("share_event_", self.event_types_),
            ("share_channel_", self.channels_),
            ("share_category_", self.categories_),
        ):
            if vocab:
                names += _unique_names(prefix, vocab, reserved=["other"])
                names.append(prefix + "other")
        return names

    def get_feature_names_out(self) -> list[str]:
        """Names of the feature columns (after ``customer_id``)."""
        self._check_fitted()
        return list(self.feature_names_out_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_out_"):
            raise UserInputError(
                "This RFMFeaturizer instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    def _bar(self, path, desc: str):
        total = None
        if self.progress and detect_format(path) == "parquet":
            total = count_rows(path)
        return progress_bar(self.progress, total=total, desc=desc, unit="rows")

    # ------------------------------------------------------------------ transform
    def transform(self, events_path, customer_ids, texts_path=None) -> pa.Table:
        """Compute the features of ``customer_ids`` (one row each, in that order).

        Parameters
        ----------
        events_path : path-like
            Canonical events Parquet file or folder.
        customer_ids : pyarrow.Array or sequence of str
            Ids of the customers table, unique. Events of other customers are ignored and
            counted in ``stats_["events_unknown_customer"]``.
        texts_path : path-like, optional
            Canonical texts table; required exactly when the featurizer was fitted with texts.

        Returns
        -------
        pyarrow.Table
            ``customer_id`` then the float64 columns of :attr:`feature_names_out_`.
        """
        self._check_fitted()
        self._validate_params()
        if (texts_path is None) != (self.text_sources_ is None):
            raise UserInputError(
                "texts_path must be given to transform exactly when it was given to fit "
                f"(fitted {'with' if self.text_sources_ is not None else 'without'} texts)",
                table="texts",
            )
        ids = as_customer_ids(customer_ids)
        acc = _EventAccumulator(self, ids)
        _check_columns(events_path, "events", _EVENT_COLUMNS)
        bar = self._bar(events_path, "features")
        batches = iter_table_batches(events_path, _EVENT_COLUMNS, batch_size=self.batch_size)
        for batch, idx in _indexed_batches(batches, ids):
            acc.add(batch, idx)
            bar.update(batch.num_rows)
        bar.close()
        columns = acc.finish()
        stats = dict(acc.stats)
        if texts_path is not None:
            texts = _TextAccumulator(self, ids)
            _check_columns(texts_path, "texts", _TEXT_COLUMNS)
            batches = iter_table_batches(texts_path, _TEXT_COLUMNS, batch_size=self.batch_size)
            for batch, idx in _indexed_batches(batches, ids):
                texts.add(batch, idx)
            columns.update(texts.finish())
            stats.update(texts.stats)
        columns.update(acc.finish_shares())
        stats["customers"] = len(ids)
        stats["customers_without_events"] = int(np.count_nonzero(columns["n_events"] == 0))
        self.stats_ = stats
        if stats["events_unknown_customer"]:
            log.warning(
                "%d events before as_of belong to customers not in customer_ids; ignored",
                stats["events_unknown_customer"],
            )
        names = self.feature_names_out_
        arrays = [ids] + [pa.array(columns[name], type=pa.float64()) for name in names]
        table = pa.Table.from_arrays(arrays, names=["customer_id", *names])
        return table.replace_schema_metadata(
            {"gpuseg.features.as_of": _iso(self._as_of_us), "gpuseg.features.format_version": str(FORMAT_VERSION)}
        )

    def fit_transform(self, events_path, customer_ids, texts_path=None) -> pa.Table:
        """:meth:`fit` then :meth:`transform` on the same tables."""
        return self.fit(events_path, texts_path).transform(events_path, customer_ids, texts_path)

    # ------------------------------------------------------------------ persistence
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (``as_of`` as an ISO string), JSON-able."""
        as_of = self.as_of if isinstance(self.as_of, str) else _iso(to_microseconds(self.as_of))
        return {
            "as_of": as_of,
            "roles": None if self.roles is None else {k: list(v) for k, v in self.roles.items()},
            "recent_window_days": self.recent_window_days,
            "top_n_event_types": self.top_n_event_types,
            "top_n_channels": self.top_n_channels,
            "top_n_categories": self.top_n_categories,
            "batch_size": self.batch_size,
            "progress": self.progress,
        }

    def to_dict(self) -> dict[str, Any]:
        """Parameters and fitted vocabularies as a JSON-able dict."""
        self._check_fitted()
        return {
            "type": "RFMFeaturizer",
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "fitted": {
                "as_of_us": self._as_of_us,
                "event_types": list(self.event_types_),
                "channels": list(self.channels_),
                "categories": list(self.categories_),
                "text_sources": None if self.text_sources_ is None else list(self.text_sources_),
                "feature_names_out": list(self.feature_names_out_),
            },
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> RFMFeaturizer:
        """Rebuild a fitted featurizer from :meth:`to_dict` output."""
        check_state(state, kind="RFMFeaturizer", version=FORMAT_VERSION)
        self = cls(**state["params"])
        self._validate_params()
        fitted = state["fitted"]
        if int(fitted["as_of_us"]) != self._as_of_us:
            raise UserInputError("RFMFeaturizer state is inconsistent: as_of differs from as_of_us")
        self.event_types_ = list(fitted["event_types"])
        self.channels_ = list(fitted["channels"])
        self.categories_ = list(fitted["categories"])
        sources = fitted["text_sources"]
        self.text_sources_ = None if sources is None else list(sources)
        self.feature_names_out_ = self._feature_names()
        if self.feature_names_out_ != list(fitted["feature_names_out"]):
            raise UserInputError("RFMFeaturizer state is inconsistent: feature names differ")
        return self

    def save(self, path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> RFMFeaturizer:
        """Read a featurizer written by :meth:`save`."""
        return cls.from_dict(read_json(path))


def load_featurizer(path, as_of=None) -> RFMFeaturizer:
    """A saved featurizer, optionally moved to a new observation cut-off.

    The vocabularies (top event types, channels, categories, text sources) stay the fitted
    ones: values unseen at fit go to the same "other" columns as then. Only the cut-off moves,
    so the same customers get their features as of the later date.

    Parameters
    ----------
    path : path-like
        A ``featurizer.json`` written by :meth:`RFMFeaturizer.save`.
    as_of : str, datetime-like or None
        New cut-off; None keeps the fitted one.
    """
    state = read_json(path)
    if as_of is not None and isinstance(state, Mapping) and "params" in state and "fitted" in state:
        text = _iso(to_microseconds(as_of))  # the form get_params records, read back the same way
        state = {**state, "params": {**state["params"], "as_of": text},
                 "fitted": {**state["fitted"], "as_of_us": to_microseconds(text)}}
    return RFMFeaturizer.from_dict(state)


def compute_rfm_features(events_path, customer_ids, *, as_of, texts_path=None, **params) -> pa.Table:
    """One-shot ``RFMFeaturizer(as_of=as_of, **params).fit_transform(...)``."""
    return RFMFeaturizer(as_of=as_of, **params).fit_transform(events_path, customer_ids, texts_path)


# ---------------------------------------------------------------------- helpers


def _before(path, limit: pa.Scalar):
    """``timestamp < limit`` as a dataset filter for Parquet input (None for CSV, read whole)."""
    return pc.field("timestamp") < limit if detect_format(path) == "parquet" else None


def _check_columns(path, table: str, needed: Sequence[str]) -> None:
    if not Path(path).exists():
        raise UserInputError(f"file '{path}' does not exist", table=table)
    present = set(table_columns(path))
    for name in needed:
        if name not in present:
            raise UserInputError(
                f"column is missing from '{path}' (canonical columns: {list(needed)})",
                table=table,
                column=name,
            )


def _customer_index(batch: pa.RecordBatch, ids: pa.Array) -> np.ndarray:
    """Row of each event's customer in ``ids`` (int32), -1 for customers not in ``ids``."""
    idx = pc.index_in(_string_column(batch, "customer_id"), value_set=ids)
    return idx.fill_null(-1).to_numpy(zero_copy_only=False)


def _indexed_batches(batches: Iterator[pa.RecordBatch], ids: pa.Array) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Yield ``(batch, customer index)`` in order, reading and indexing the next batch in a worker.

    ``index_in`` rebuilds its hash table of all customer ids on every call and, with the Parquet
    decoding, is the costliest step; both release the GIL, so overlapping them with the numpy
    accumulation of the previous batch shortens the wall time without changing any result.
    """
    source = iter(batches)

    def step() -> tuple[pa.RecordBatch, np.ndarray] | None:
        batch = next(source, None)
        return None if batch is None else (batch, _customer_index(batch, ids))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuseg-features") as pool:
        future = pool.submit(step)
        while (item := future.result()) is not None:
            future = pool.submit(step)
            yield item


def _count_values(counter: Counter, values: pa.Array) -> None:
    if len(values) == 0 or values.null_count == len(values):
        return
    for item in pc.value_counts(values.drop_null()):
        counter[item["values"].as_py()] += item["counts"].as_py()


def _top(counter: Counter, n: int) -> list[str]:
    return [v for v, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


class _EventAccumulator:
    """Per-customer running counts and sums over event batches.

    Float sums use ``np.add.at``, which adds in row order into the running total: the result does
    not depend on where batch boundaries fall, so rows after ``as_of`` (filtered out) cannot shift
    a sum by a rounding step.
    """

    def __init__(self, feat: RFMFeaturizer, ids: pa.Array):
        n = len(ids)
        self.n = n
        self.ids = ids
        self.as_of = feat._as_of_us
        w = int(round(feat.recent_window_days * US_PER_DAY))
        self.recent_start = self.as_of - w
        self.prev_start = self.as_of - 2 * w
        roles = feat._roles
        # one lookup of event_type against top-N types + role types, then table lookups
        self.n_top = len(feat.event_types_)
        extra = sorted({t for ts in roles.values() for t in ts} - set(feat.event_types_))
        type_values = list(feat.event_types_) + extra
        self.type_vocab = pa.array(type_values, type=pa.string())
        n_types = len(type_values)
        # code n_types = not in list (other), n_types + 1 = null
        self.share_bucket = np.array(
            list(range(self.n_top)) + [self.n_top] * len(extra) + [self.n_top, self.n_top + 1]
        )
        self.role_flag = {}
        for role, types in roles.items():
            flag = np.zeros(n_types + 2, dtype=bool)
            flag[[i for i, t in enumerate(type_values) if t in set(types)]] = True
            self.role_flag[role] = flag
        self.n_types = n_types
        self.channel_vocab = pa.array(feat.channels_, type=pa.string())
        self.category_vocab = pa.array(feat.categories_, type=pa.string())

        z = lambda dtype=np.int64: np.zeros(n, dtype=dtype)  # noqa: E731
        self.n_events, self.act_recent, self.act_prev = z(), z(), z()
        self.first = np.full(n, _NO_TIME, dtype=np.int64)
        self.last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        self.n_purchase, self.n_returns, self.n_tickets, self.n_reviews = z(), z(), z(), z()
        self.spend, self.spend_recent, self.spend_prev = z(np.float64), z(np.float64), z(np.float64)
        self.return_amount = z(np.float64)
        self.share_counts = {
            "event": np.zeros(n * (self.n_top + 2), dtype=np.int64) if self.n_top else None,
            "channel": np.zeros(n * (len(feat.channels_) + 2), dtype=np.int64) if feat.channels_ else None,
            "category": np.zeros(n * (len(feat.categories_) + 2), dtype=np.int64) if feat.categories_ else None,
        }
        self.p_idx: list[np.ndarray] = []
        self.p_ts: list[np.ndarray] = []
        self.stats = {"events_read": 0, "events_after_as_of": 0, "events_unknown_customer": 0, "events_used": 0}

    def add(self, batch: pa.RecordBatch, idx: np.ndarray) -> None:
        """Accumulate one batch; ``idx`` is each row's customer index (-1: unknown customer)."""
        n = self.n
        rows = batch.num_rows
        self.stats["events_read"] += rows
        ts = _timestamps(batch)
        before = ts < self.as_of
        n_before = int(np.count_nonzero(before))
        self.stats["events_after_as_of"] += rows - n_before
        if n_before == 0:
            return
        keep = before & (idx >= 0)
        n_keep = int(np.count_nonzero(keep))
        self.stats["events_unknown_customer"] += n_before - n_keep
        self.stats["events_used"] += n_keep
        if n_keep == 0:
            return
        i = idx[keep].astype(np.intp)
        t = ts[keep]
        amount_col = batch.column("amount")
        if amount_col.type != pa.float64():
            amount_col = amount_col.cast(pa.float64())
        amt = amount_col.fill_null(0.0).to_numpy(zero_copy_only=False)[keep]
        amt[~np.isfinite(amt)] = 0.0  # NaN/inf amounts count as 0, like nulls
        type_code = _codes(_string_column(batch, "event_type"), self.type_vocab, self.n_types)[keep]

        self.n_events += np.bincount(i, minlength=n)
        np.minimum.at(self.first, i, t)
        np.maximum.at(self.last, i, t)
        recent = t >= self.recent_start
        prev = (t >= self.prev_start) & ~recent
        self.act_recent += np.bincount(i[recent], minlength=n)
        self.act_prev += np.bincount(i[prev], minlength=n)

        negative = amt < 0
        is_return = self.role_flag["return"][type_code] | negative
        is_purchase = self.role_flag["purchase"][type_code] & ~negative
        pi, pt, pa_ = i[is_purchase], t[is_purchase], amt[is_purchase]
        self.n_purchase += np.bincount(pi, minlength=n)
        np.add.at(self.spend, pi, pa_)
        r = pt >= self.recent_start
        p = (pt >= self.prev_start) & ~r
        np.add.at(self.spend_recent, pi[r], pa_[r])
        np.add.at(self.spend_prev, pi[p], pa_[p])
        self.p_idx.append(pi.astype(np.int32))
        self.p_ts.append(pt)

        self.n_returns += np.bincount(i[is_return], minlength=n)
        np.add.at(self.return_amount, i[is_return], np.abs(amt[is_return]))
        self.n_tickets += np.bincount(i[self.role_flag["ticket"][type_code]], minlength=n)
        self.n_reviews += np.bincount(i[self.role_flag["review"][type_code]], minlength=n)

        if self.share_counts["event"] is not None:
            self._add_share("event", i, self.share_bucket[type_code], self.n_top)
        for name, vocab in (("channel", self.channel_vocab), ("category", self.category_vocab)):
            if self.share_counts[name] is not None:
                codes = _codes(_string_column(batch, name), vocab, len(vocab))[keep]
                self._add_share(name, i, codes, len(vocab))

    def _add_share(self, name: str, i: np.ndarray, codes: np.ndarray, k: int) -> None:
        # np.add.at touches only the rows' cells; a bincount would allocate n * (k + 2) per batch
        np.add.at(self.share_counts[name], i * (k + 2) + codes, 1)

    def finish(self) -> dict[str, np.ndarray]:
        n = self.n
        nan = np.full(n, np.nan)
        has_event = self.n_events > 0
        out: dict[str, np.ndarray] = {}
        out["n_events"] = self.n_events.astype(np.float64)
        # customers without events keep the sentinels; swap them out before subtracting
        first = np.where(has_event, self.first, self.as_of)
        last = np.where(has_event, self.last, self.as_of)
        out["tenure_days"] = np.where(has_event, (self.as_of - first) / US_PER_DAY, nan)
        out["days_since_last_event"] = np.where(has_event, (self.as_of - last) / US_PER_DAY, nan)
        out["trend_activity"] = _trend(self.act_recent, self.act_prev)

        # purchase occasions = distinct (customer, timestamp) pairs, sorted by customer then time
        p_idx = np.concatenate(self.p_idx) if self.p_idx else np.zeros(0, np.int32)
        p_ts = np.concatenate(self.p_ts) if self.p_ts else np.zeros(0, np.int64)
        self.p_idx, self.p_ts = [], []
        g, t = _sorted_pairs(p_idx, p_ts, n)
        del p_idx, p_ts
        new = np.ones(len(g), dtype=bool)
        new[1:] = (g[1:] != g[:-1]) | (t[1:] != t[:-1])
        g, t = g[new], t[new]
        freq = np.bincount(g, minlength=n)
        has_purchase = freq > 0
        last_p = np.zeros(n, dtype=np.int64)
        last_of_group = np.ones(len(g), dtype=bool)
        last_of_group[:-1] = g[1:] != g[:-1]
        last_p[g[last_of_group]] = t[last_of_group]
        out["recency_days"] = np.where(has_purchase, (self.as_of - last_p) / US_PER_DAY, nan)
        out["frequency"] = freq.astype(np.float64)
        out["n_purchase_events"] = self.n_purchase.astype(np.float64)
        out["monetary_sum"] = self.spend.copy()
        out["monetary_net"] = self.spend - self.return_amount
        mean = np.full(n, np.nan)
        np.divide(self.spend, freq, out=mean, where=has_purchase)
        out["monetary_mean"] = mean
        occ_recent = t >= self.recent_start
        occ_prev = (t >= self.prev_start) & ~occ_recent
        out["trend_purchases"] = _trend(
            np.bincount(g[occ_recent], minlength=n), np.bincount(g[occ_prev], minlength=n)
        )
        out["trend_spend"] = _trend(self.spend_recent, self.spend_prev)
        out.update(_gap_stats(g, t, n))
        out["n_returns"] = self.n_returns.astype(np.float64)
        out["return_amount"] = self.return_amount.copy()
        out["n_tickets"] = self.n_tickets.astype(np.float64)
        out["n_reviews"] = self.n_reviews.astype(np.float64)
        return out

    def finish_shares(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        denom = np.maximum(self.n_events, 1).astype(np.float64)[:, None]
        for name, prefix, vocab in (
            ("event", "share_event_", self._vocab_list(self.type_vocab)[: self.n_top]),
            ("channel", "share_channel_", self._vocab_list(self.channel_vocab)),
            ("category", "share_category_", self._vocab_list(self.category_vocab)),
        ):
            counts = self.share_counts[name]
            if counts is None:
                continue
            k = len(vocab)
            shares = counts.reshape(self.n, k + 2)[:, : k + 1] / denom
            names = _unique_names(prefix, vocab, reserved=["other"]) + [prefix + "other"]
            for j, col in enumerate(names):
                out[col] = np.ascontiguousarray(shares[:, j])
        return out

    @staticmethod
    def _vocab_list(vocab: pa.Array) -> list[str]:
        return vocab.to_pylist()


def _gap_stats(g: np.ndarray, t: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Mean, population std and median of the gaps (days) between consecutive occasions."""
    same = g[1:] == g[:-1]
    gap_g = g[1:][same]
    gap_t = (t[1:] - t[:-1])[same]
    n_gaps = np.bincount(gap_g, minlength=n)
    has = n_gaps > 0
    days = gap_t / US_PER_DAY
    mean = np.full(n, np.nan)
    np.divide(np.bincount(gap_g, weights=days, minlength=n), n_gaps, out=mean, where=has)
    dev = days - mean[gap_g]
    std = np.full(n, np.nan)
    np.divide(np.bincount(gap_g, weights=dev * dev, minlength=n), n_gaps, out=std, where=has)
    np.sqrt(std, out=std)
    # median: gaps sorted within each customer, then the middle one(s) of each run
    sg, sv = _sorted_pairs(gap_g, gap_t, n)
    starts = np.concatenate(([0], np.cumsum(n_gaps)[:-1]))
    m = n_gaps[has]
    s = starts[has]
    median = np.full(n, np.nan)
    median[has] = (sv[s + (m - 1) // 2] + sv[s + m // 2]) / (2 * US_PER_DAY)
    del sg
    return {
        "interpurchase_mean_days": mean,
        "interpurchase_std_days": std,
        "interpurchase_median_days": median,
    }


class _TextAccumulator:
    """Per-customer text counts per fitted source and mean rating, texts before ``as_of`` only."""

    def __init__(self, feat: RFMFeaturizer, ids: pa.Array):
        self.n = len(ids)
        self.ids = ids
        self.as_of = feat._as_of_us
        self.sources = list(feat.text_sources_)
        self.vocab = pa.array(self.sources, type=pa.string())
        k = len(self.sources)
        self.counts = np.zeros(self.n * (k + 2), dtype=np.int64)
        self.rating_sum = np.zeros(self.n)
        self.rating_n = np.zeros(self.n, dtype=np.int64)
        self.stats = {"texts_read": 0, "texts_after_as_of": 0, "texts_unknown_customer": 0, "texts_used": 0}

    def add(self, batch: pa.RecordBatch, idx: np.ndarray) -> None:
        rows = batch.num_rows
        self.stats["texts_read"] += rows
        before = _timestamps(batch) < self.as_of
        n_before = int(np.count_nonzero(before))
        self.stats["texts_after_as_of"] += rows - n_before
        if n_before == 0:
            return
        keep = before & (idx >= 0)
        n_keep = int(np.count_nonzero(keep))
        self.stats["texts_unknown_customer"] += n_before - n_keep
        self.stats["texts_used"] += n_keep
        i = idx[keep].astype(np.intp)
        k = len(self.sources)
        codes = _codes(_string_column(batch, "source"), self.vocab, k)[keep]
        self.counts += np.bincount(i * (k + 2) + codes, minlength=self.n * (k + 2))
        rating = batch.column("rating")
        if rating.type != pa.float64():
            rating = rating.cast(pa.float64())
        r = rating.fill_null(np.nan).to_numpy(zero_copy_only=False)[keep]
        ok = np.isfinite(r)
        np.add.at(self.rating_sum, i[ok], r[ok])
        self.rating_n += np.bincount(i[ok], minlength=self.n)

    def finish(self) -> dict[str, np.ndarray]:
        k = len(self.sources)
        counts = self.counts.reshape(self.n, k + 2)
        out = {"n_texts": counts.sum(axis=1).astype(np.float64)}
        for j, name in enumerate(_unique_names("n_texts_", self.sources)):
            out[name] = counts[:, j].astype(np.float64)
        mean = np.full(self.n, np.nan)
        np.divide(self.rating_sum, self.rating_n, out=mean, where=self.rating_n > 0)
        out["mean_rating"] = mean
        return out


__all__ = [
    "BASE_FEATURES",
    "DEFAULT_ROLES",
    "RFMFeaturizer",
    "compute_rfm_features",
    "sanitize_name",
    "to_microseconds",
]
