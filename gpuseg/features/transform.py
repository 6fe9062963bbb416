"""Fitted transform from a feature table (+ static customer attributes) to the model matrix.

:class:`TabularTransform` learns everything it needs at ``fit`` (which columns get ``log1p``, the
imputation medians, the scaling statistics, the category vocabularies and the output column
order) and stores it as JSON, so ``assign`` can later apply the very same transform to new data.

Numeric columns, in this order:

1. values that are null, NaN or +-inf are *missing*;
2. ``log1p`` for heavy-tailed columns (``log1p="auto"``: non-negative at fit with a sample
   skewness above ``skew_threshold``; or an explicit list). At transform, values below 0 in a
   log column are clipped to 0 first (the column was non-negative at fit);
3. missing values are imputed with the fitted median (of the ``log1p``-ed values), and a
   ``<col>__missing`` 0/1 indicator column is added **only for the columns that had missing
   values at fit time** (so the output width is fixed at fit; a column complete at fit that has
   gaps later is imputed without indicator);
4. scaling: ``robust`` = (x - median) / IQR, falling back to the std, then to 1, when the IQR is 0;
   ``standard`` = (x - mean) / std (std 0 -> 1); ``none``.

Output order: the numeric columns, then their ``__missing`` indicators, then the one-hot blocks.

Categorical columns: the ``top_n_categories`` most frequent values at fit get one-hot columns
``<col>=<value>``, every other value goes to ``<col>=__other__`` and nulls to ``<col>=__missing__``
(both always present).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.runtime.artifacts import check_state
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import read_json, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
OTHER = "__other__"
MISSING = "__missing__"
_SCALINGS = ("robust", "standard", "none")


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _numeric_values(table: pa.Table, name: str) -> np.ndarray:
    """float64 values of a numeric column; null and non-finite become NaN."""
    col = table.column(name)
    if not _is_numeric(col.type):
        raise UserInputError(
            f"expected a numeric column, got type {col.type}", table="features", column=name
        )
    values = col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


def _string_values(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if col.type != pa.string():
        try:
            col = col.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise UserInputError(
                f"expected a string column, got type {col.type}", table="features", column=name
            ) from None
    return col


def _skewness(x: np.ndarray) -> float:
    """Biased sample skewness (Fisher-Pearson, like ``scipy.stats.skew``); 0 for a constant."""
    if x.size < 3:
        return 0.0
    d = x - x.mean()
    m2 = float(np.mean(d * d))
    if m2 <= 0:
        return 0.0
    return float(np.mean(d * d * d)) / m2**1.5


class TabularTransform:
    """Log, impute, scale and one-hot encode a table into a float32 matrix, persistably.

    Parameters
    ----------
    numeric : list of str, optional
        Numeric columns to use. None: every integer, float or boolean column except
        ``customer_id``, the ``categorical`` columns and ``exclude``.
    categorical : list of str, optional
        String columns to one-hot encode. None: none.
    exclude : list of str, optional
        Columns never used when ``numeric`` is None (e.g. label columns such as ``churned``).
    log1p : "auto", list of str, or None, default="auto"
        Columns that get ``log1p``; "auto" picks non-negative columns with skewness above
        ``skew_threshold``; None or [] disables it.
    skew_threshold : float, default=1.0
        Skewness above which "auto" applies ``log1p``.
    top_n_categories : int, default=10
        One-hot columns per categorical column (plus ``__other__`` and ``__missing__``).
    scaling : {"robust", "standard", "none"}, default="robust"
        Scaling of the numeric columns.

    Attributes
    ----------
    numeric_ : list of dict
        Per numeric column: name, log1p, impute, center, scale, indicator.
    categorical_ : list of dict
        Per categorical column: name, categories.
    feature_names_in_ : list of str
        Input columns used, in order.
    feature_names_out_ : list of str
        Output columns, in order.
    """

    def __init__(
        self,
        *,
        numeric: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        log1p: str | Sequence[str] | None = "auto",
        skew_threshold: float = 1.0,
        top_n_categories: int = 10,
        scaling: str = "robust",
    ):
        self.numeric = numeric
        self.categorical = categorical
        self.exclude = exclude
        self.log1p = log1p
        self.skew_threshold = skew_threshold
        self.top_n_categories = top_n_categories
        self.scaling = scaling

    # ------------------------------------------------------------------ parameters
    def _validate_params(self) -> None:
        for name in ("numeric", "categorical", "exclude"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, str) or not all(isinstance(v, str) for v in value)
            ):
                raise ConfigError(
                    f"The '{name}' parameter of TabularTransform must be a list of column names "
                    f"or None. Got {value!r} instead."
                )
        lp = self.log1p
        if not (lp is None or lp == "auto" or (not isinstance(lp, str) and all(isinstance(v, str) for v in lp))):
            raise ConfigError(
                "The 'log1p' parameter of TabularTransform must be 'auto', a list of column names "
                f"or None. Got {lp!r} instead."
            )
        st = self.skew_threshold
        if isinstance(st, bool) or not isinstance(st, (int, float)) or not math.isfinite(st):
            raise ConfigError(
                "The 'skew_threshold' parameter of TabularTransform must be a finite float. "
                f"Got {st!r} instead."
            )
        n = self.top_n_categories
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(
                "The 'top_n_categories' parameter of TabularTransform must be an int in the range "
                f"[0, inf). Got {n!r} instead."
            )
        if self.scaling not in _SCALINGS:
            raise ConfigError(
                f"The 'scaling' parameter of TabularTransform must be a str among {list(_SCALINGS)}. "
                f"Got {self.scaling!r} instead."
            )

    def _columns(self, table: pa.Table) -> tuple[list[str], list[str]]:
        schema = table.schema
        categorical = list(self.categorical or [])
        if self.numeric is None:
            skip = {"customer_id", *categorical, *(self.exclude or [])}
            numeric = [f.name for f in schema if f.name not in skip and _is_numeric(f.type)]
        else:
            numeric = list(self.numeric)
        for name in numeric + categorical:
            if name not in schema.names:
                raise UserInputError("column listed for TabularTransform is absent", table="features", column=name)
        both = set(numeric) & set(categorical)
        if both:
            raise ConfigError(f"columns {sorted(both)} are listed as both numeric and categorical")
        if len(set(numeric)) != len(numeric) or len(set(categorical)) != len(categorical):
            raise ConfigError("TabularTransform numeric/categorical lists hold duplicated columns")
        return numeric, categorical

    # ------------------------------------------------------------------ fit
    def fit(self, table: pa.Table) -> TabularTransform:
        """Learn log columns, medians, scales, vocabularies and the output order from ``table``.

        Parameters
        ----------
        table : pyarrow.Table
            Feature table (e.g. RFM features joined with static customer attributes).

        Returns
        -------
        self
        """
        self._validate_params()
        if table.num_rows == 0:
            raise UserInputError("cannot fit TabularTransform on an empty table", table="features")
        numeric, categorical = self._columns(table)
        if self.log1p not in (None, "auto"):
            unknown = sorted(set(self.log1p) - set(numeric))
            if unknown:
                raise ConfigError(f"log1p columns {unknown} are not among the numeric columns")
        self.numeric_ = [self._fit_numeric(table, name) for name in numeric]
        self.categorical_ = [self._fit_categorical(table, name) for name in categorical]
        self._set_names()
        log.info(
            "TabularTransform fitted: %d numeric (%d log1p, %d with missing), %d categorical -> %d columns",
            len(self.numeric_),
            sum(c["log1p"] for c in self.numeric_),
            sum(c["indicator"] for c in self.numeric_),
            len(self.categorical_),
            len(self.feature_names_out_),
        )
        return self

    def _fit_numeric(self, table: pa.Table, name: str) -> dict[str, Any]:
        x = _numeric_values(table, name)
        finite = x[~np.isnan(x)]
        if self.log1p == "auto":
            use_log = finite.size > 0 and finite.min() >= 0 and _skewness(finite) > self.skew_threshold
        else:
            use_log = name in (self.log1p or [])
            if use_log and finite.size and finite.min() < 0:
                raise UserInputError(
                    "log1p was requested but the column has negative values", table="features", column=name
                )
        if use_log:
            finite = np.log1p(finite)
        if finite.size == 0:
            log.warning("column %r has no finite value at fit; it is imputed with 0", name)
            impute, center, scale = 0.0, 0.0, 1.0
        else:
            impute = float(np.median(finite))
            center, scale = self._scale_stats(finite, impute)
        return {
            "name": name,
            "log1p": bool(use_log),
            "impute": impute,
            "center": center,
            "scale": scale,
            "indicator": bool(finite.size < x.size),
        }

    def _scale_stats(self, x: np.ndarray, median: float) -> tuple[float, float]:
        if self.scaling == "none":
            return 0.0, 1.0
        std = float(np.std(x))
        if self.scaling == "standard":
            return float(np.mean(x)), std if std > 0 else 1.0
        q25, q75 = np.percentile(x, [25, 75])
        iqr = float(q75 - q25)
        return median, iqr if iqr > 0 else (std if std > 0 else 1.0)

    def _fit_categorical(self, table: pa.Table, name: str) -> dict[str, Any]:
        values = _string_values(table, name).drop_null()
        counts = pc.value_counts(values).to_pylist() if len(values) else []
        ranked = sorted(((c["counts"], c["values"]) for c in counts), key=lambda cv: (-cv[0], cv[1]))
        return {"name": name, "categories": [v for _, v in ranked[: self.top_n_categories]]}

    def _set_names(self) -> None:
        names = []
        for col in self.numeric_:
            names.append(col["name"])
        for col in self.numeric_:
            if col["indicator"]:
                names.append(f"{col['name']}__missing")
        for col in self.categorical_:
            names += [f"{col['name']}={v}" for v in col["categories"]]
            names += [f"{col['name']}={OTHER}", f"{col['name']}={MISSING}"]
        self.feature_names_in_ = [c["name"] for c in self.numeric_ + self.categorical_]
        self.feature_names_out_ = names

    # ------------------------------------------------------------------ transform
    def transform(self, table: pa.Table) -> tuple[np.ndarray, list[str]]:
        """Apply the fitted transform.

        Parameters
        ----------
        table : pyarrow.Table
            Table holding every column used at fit (extra columns are ignored).

        Returns
        -------
        X : numpy.ndarray of float32, shape (n_rows, len(feature_names_out_))
        feature_names : list of str
        """
        self._check_fitted()
        for name in self.feature_names_in_:
            if name not in table.schema.names:
                raise UserInputError(
                    "column was present when TabularTransform was fitted but is missing now",
                    table="features",
                    column=name,
                )
        n = table.num_rows
        X = np.empty((n, len(self.feature_names_out_)), dtype=np.float32)
        j = 0
        indicators = []
        for col in self.numeric_:
            x = _numeric_values(table, col["name"])
            missing = np.isnan(x)
            if col["log1p"]:
                x = np.log1p(np.maximum(x, 0.0))
            x[missing] = col["impute"]
            X[:, j] = (x - col["center"]) / col["scale"]
            j += 1
            if col["indicator"]:
                indicators.append(missing)
        for missing in indicators:
            X[:, j] = missing
            j += 1
        for col in self.categorical_:
            values = _string_values(table, col["name"])
            k = len(col["categories"])
            vocab = pa.array(col["categories"], type=pa.string())
            codes = pc.index_in(values, value_set=vocab).fill_null(k).to_numpy(zero_copy_only=False)
            codes = codes.astype(np.int64)
            codes[~values.is_valid().to_numpy(zero_copy_only=False)] = k + 1
            X[:, j : j + k + 2] = codes[:, None] == np.arange(k + 2)[None, :]
            j += k + 2
        return X, list(self.feature_names_out_)

    def fit_transform(self, table: pa.Table) -> tuple[np.ndarray, list[str]]:
        """:meth:`fit` then :meth:`transform` on ``table``."""
        return self.fit(table).transform(table)

    def get_feature_names_out(self) -> list[str]:
        """Output column names, in order."""
        self._check_fitted()
        return list(self.feature_names_out_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_out_"):
            raise UserInputError(
                "This TabularTransform instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    # ------------------------------------------------------------------ persistence
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, JSON-able."""
        as_list = lambda v: None if v is None else (v if isinstance(v, str) else list(v))  # noqa: E731
        return {
            "numeric": as_list(self.numeric),
            "categorical": as_list(self.categorical),
            "exclude": as_list(self.exclude),
            "log1p": as_list(self.log1p),
            "skew_threshold": self.skew_threshold,
            "top_n_categories": self.top_n_categories,
            "scaling": self.scaling,
        }

    def to_dict(self) -> dict[str, Any]:
        """Parameters and fitted state as a JSON-able dict (floats round-trip exactly)."""
        self._check_fitted()
        return {
            "type": "TabularTransform",
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "numeric": [dict(c) for c in self.numeric_],
            "categorical": [{"name": c["name"], "categories": list(c["categories"])} for c in self.categorical_],
            "feature_names_out": list(self.feature_names_out_),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> TabularTransform:
        """Rebuild a fitted transform from :meth:`to_dict` output."""
        check_state(state, kind="TabularTransform", version=FORMAT_VERSION)
        self = cls(**state["params"])
        self._validate_params()
        self.numeric_ = [
            {
                "name": str(c["name"]),
                "log1p": bool(c["log1p"]),
                "impute": float(c["impute"]),
                "center": float(c["center"]),
                "scale": float(c["scale"]),
                "indicator": bool(c["indicator"]),
            }
            for c in state["numeric"]
        ]
        self.categorical_ = [
            {"name": str(c["name"]), "categories": [str(v) for v in c["categories"]]}
            for c in state["categorical"]
        ]
        self._set_names()
        if self.feature_names_out_ != list(state["feature_names_out"]):
            raise UserInputError("TabularTransform state is inconsistent: feature names differ")
        return self

    def save(self, path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> TabularTransform:
        """Read a transform written by :meth:`save`."""
        return cls.from_dict(read_json(path))


__all__ = ["TabularTransform"]
