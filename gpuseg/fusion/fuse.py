"""``BlockFuser``: align per-customer blocks, standardise and weight each, optional PCA and L2.

The blocks (tabular features, text embeddings, journey embeddings, ...) arrive as
``name -> (ids, X[, columns])``. Fitting learns, and :meth:`BlockFuser.transform` then applies
unchanged to new data:

1. alignment on customer id: every customer of the reference id list is kept; a customer that a
   block does not cover gets zeros for that block (after standardisation, i.e. the block mean)
   and, when the block had such customers at fit, a ``<block>__present`` 0/1 flag column;
2. per-column standardisation of each block (mean and std over the customers it covers);
3. block weights: ``"equal_variance"`` scales each block to the same total variance, so a
   384-dim text block does not drown 30 RFM columns (plain standardisation would give it ~13x
   the weight in every distance); a dict gives each block's *share* of the total variance;
4. optional PCA (eigendecomposition of the covariance, on the device) and L2 normalisation.

The fitted state is saved as safetensors (numbers) + JSON (block order, column order per
block, weights, flags); nothing is pickled.

``BlockFuser`` is a scikit-learn estimator for parameters (``get_params``/``set_params``,
``clone``, grid searches over its parameters); its input is a dict of blocks and its output an
``(ids, matrix)`` pair, so it is not a drop-in ``Pipeline`` step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from gpuseg.data.convert import as_customer_ids
from gpuseg.runtime import pca
from gpuseg.runtime.artifacts import load_artifact, save_artifact
from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.validation import (
    InputDataError,
    InvalidParameterError,
    check_bool,
    check_device,
    check_fitted,
    check_param,
    check_param_names,
    int_range,
    is_int,
    is_real,
    real_range,
    str_options,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KIND = "gpuseg.BlockFuser"
_NAME = "BlockFuser"
_REMEDY = "re-run `gpuseg fuse` (or fit and save the BlockFuser again)"
_WEIGHTS = ("equal_variance", "none")
#: rows per device chunk in transform and in the PCA covariance
_CHUNK = 65536

BlockInput = tuple  # (ids, X) or (ids, X, columns)


def _as_ids(ids: Any, where: str) -> pa.Array:
    """Unique, non-null string ids (:func:`~gpuseg.data.convert.as_customer_ids`), errors naming ``where``."""
    try:
        return as_customer_ids(ids)
    except UserInputError as exc:
        raise InputDataError(f"{where}: {exc.args[0]}") from exc


def _unpack(name: str, value: Any) -> tuple[pa.Array, np.ndarray, list[str]]:
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise InputDataError(f"block {name!r} must be a tuple (ids, X) or (ids, X, columns), "
                             f"got {type(value).__name__}")
    ids = _as_ids(value[0], f"block {name!r}")
    X = np.asarray(value[1])
    if X.ndim != 2:
        raise InputDataError(f"block {name!r}: X must be 2-D (n_customers, n_columns), got shape {X.shape}")
    if X.shape[0] != len(ids):
        raise InputDataError(f"block {name!r}: {len(ids)} ids but {X.shape[0]} rows in X")
    if not np.issubdtype(X.dtype, np.number) and X.dtype != bool:
        raise InputDataError(f"block {name!r}: X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(1))[:5].tolist()
        raise InputDataError(f"block {name!r}: rows {bad} hold NaN or infinity; impute them upstream")
    columns = list(value[2]) if len(value) == 3 and value[2] is not None else [
        f"{name}[{i}]" for i in range(X.shape[1])]
    if len(columns) != X.shape[1]:
        raise InputDataError(f"block {name!r}: {len(columns)} column names for {X.shape[1]} columns")
    return ids, X, columns


def _reference_ids(parsed: dict[str, tuple[pa.Array, np.ndarray, list[str]]], ids: Any) -> pa.Array:
    if ids is not None:
        return _as_ids(ids, "the reference ids")
    # the union of the blocks' ids, in first-seen order
    ref = pa.concat_arrays([p[0] for p in parsed.values()])
    return ref.unique() if len(ref) else ref


def _align(name: str, ref: pa.Array, ids: pa.Array, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``X`` in ``ref`` order (zeros where missing) and the presence mask."""
    index = pc.index_in(ref, value_set=ids)
    present = index.is_valid().to_numpy(zero_copy_only=False)
    out = np.zeros((len(ref), X.shape[1]), dtype=np.float64)
    if present.any():
        rows = index.drop_null().to_numpy(zero_copy_only=False).astype(np.int64)
        out[present] = X[rows]
    return out, present


class BlockFuser(TransformerMixin, BaseEstimator):
    """Fuse per-customer feature blocks into one matrix: align, standardise, weight, PCA, L2.

    Parameters
    ----------
    weights : {"equal_variance", "none"} or dict, default="equal_variance"
        ``"equal_variance"``: every block gets the same total variance (1.0) after
        standardisation. ``"none"``: standardised columns as they are (a block's weight grows
        with its width). A dict ``{block: share}`` gives each block's share of the total
        variance (blocks not named get 1.0; 0 drops a block's influence).
    pca_components : int, float or None, default=None
        None: no PCA. An int: keep that many principal components. A float in (0, 1): keep the
        fewest components that explain that fraction of the variance.
    l2_normalize : bool, default=False
        Scale every output row to unit L2 norm (cosine geometry), after PCA.
    standardize : bool, default=True
        Per-column z-score within each block before weighting.
    device : str or torch.device, default="auto"
        Where the PCA and the transform run.

    Attributes
    ----------
    blocks_ : list of str
        Block names in output order.
    block_columns_ : dict
        Block -> its input column names, in order (plus ``<block>__present`` when flagged).
    flagged_ : dict
        Block -> whether a presence flag column is part of it (customers were missing at fit).
    means_, scales_ : dict
        Block -> per-column standardisation statistics (flag included).
    block_weights_ : dict
        Block -> multiplier applied to its standardised columns.
    variance_shares_ : dict
        Block -> share of the total variance of the fused matrix (before PCA) at fit.
    components_ : ndarray of shape (n_components, n_features) or None
        Principal axes; ``pca_mean_`` the centre; ``explained_variance_ratio_`` their shares.
    n_features_out_ : int
        Width of the output.
    """

    def __init__(self, *, weights: str | Mapping[str, float] = "equal_variance",
                 pca_components: int | float | None = None, l2_normalize: bool = False,
                 standardize: bool = True, device: str | torch.device = "auto"):
        self.weights = weights
        self.pca_components = pca_components
        self.l2_normalize = l2_normalize
        self.standardize = standardize
        self.device = device

    # ------------------------------------------------------------------ scikit-learn plumbing
    def set_params(self, **params) -> BlockFuser:
        """Set constructor parameters (scikit-learn API); unknown names are an error."""
        check_param_names(self, params)
        return super().set_params(**params)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "blocks_")

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> None:
        w = self.weights
        if isinstance(w, Mapping):
            for key, value in w.items():
                check_param(_NAME, "weights", {key: value}, is_real(value) and value >= 0,
                            "a dict mapping block names to non-negative floats")
        else:
            check_param(_NAME, "weights", w, isinstance(w, str) and w in _WEIGHTS,
                        f"{str_options(_WEIGHTS)} or a dict of block -> variance share")
        p = self.pca_components
        check_param(_NAME, "pca_components", p,
                    p is None or (is_int(p) and p >= 1) or (isinstance(p, float) and 0 < p < 1),
                    f"None, {int_range(1)} or {real_range(0, 1, closed_low=False, closed_high=False)}")
        check_bool(_NAME, "l2_normalize", self.l2_normalize)
        check_bool(_NAME, "standardize", self.standardize)
        check_device(_NAME, self.device)

    def _check_fitted(self) -> None:
        check_fitted(_NAME, hasattr(self, "blocks_"))

    # ------------------------------------------------------------------ fit / transform
    def fit(self, blocks: Mapping[str, BlockInput], ids: Any = None) -> BlockFuser:
        """Learn alignment, standardisation, weights and PCA from the blocks.

        Parameters
        ----------
        blocks : dict
            Block name -> ``(ids, X)`` or ``(ids, X, column_names)``; ``X`` of shape
            ``(n_block_customers, n_columns)``, finite.
        ids : array-like of str, optional
            The customers of the output, in order. Default: the union of the blocks' ids in
            first-seen order.

        Returns
        -------
        self
        """
        self.fit_transform(blocks, ids)
        return self

    def fit_transform(self, blocks: Mapping[str, BlockInput], ids: Any = None) -> tuple[pa.Array, np.ndarray]:
        """Fit on ``blocks`` and return ``(ids, fused)`` for the same customers."""
        self._check_params()
        if not isinstance(blocks, Mapping) or not blocks:
            raise InputDataError(f"{_NAME}.fit needs a non-empty dict of blocks, got {blocks!r:.80}")
        if isinstance(self.weights, Mapping):
            unknown = sorted(set(self.weights) - set(blocks))
            if unknown:
                raise InvalidParameterError(f"The 'weights' parameter of {_NAME} names blocks {unknown} that are "
                                            f"not among the blocks given to fit: {sorted(blocks)}.")
        device = resolve_device(self.device, key="device")
        parsed = {name: _unpack(name, value) for name, value in blocks.items()}
        ref = _reference_ids(parsed, ids)
        if len(ref) < 2:
            raise InputDataError(f"{_NAME}.fit needs at least 2 customers, got {len(ref)}")
        self.blocks_, self.block_columns_, self.flagged_ = [], {}, {}
        self.means_, self.scales_, self.block_weights_, self.coverage_ = {}, {}, {}, {}
        standardised = []
        for name, (bids, X, columns) in parsed.items():
            aligned, present = _align(name, ref, bids, X)
            if not present.any():
                raise InputDataError(f"block {name!r} covers none of the {len(ref)} customers")
            flagged = bool(not present.all())
            mean = aligned[present].mean(0) if self.standardize else np.zeros(X.shape[1])
            std = aligned[present].std(0) if self.standardize else np.ones(X.shape[1])
            if flagged:
                columns = [*columns, f"{name}__present"]
                flag = present.astype(np.float64)
                mean = np.append(mean, flag.mean() if self.standardize else 0.0)
                std = np.append(std, flag.std() if self.standardize else 1.0)
            std = np.where(std > 1e-12, std, 1.0)
            self.blocks_.append(name)
            self.block_columns_[name] = columns
            self.flagged_[name] = flagged
            self.means_[name], self.scales_[name] = mean, std
            self.coverage_[name] = float(present.mean())
            standardised.append(self._standardise(name, aligned, present))
        # weights from the standardised blocks' total variance over all output customers
        total_var = {name: float(Z.var(0).sum()) for name, Z in zip(self.blocks_, standardised, strict=True)}
        for name in self.blocks_:
            self.block_weights_[name] = self._weight(name, total_var[name])
        fused = np.hstack([Z * self.block_weights_[n] for n, Z in zip(self.blocks_, standardised, strict=True)])
        del standardised
        weighted = {n: total_var[n] * self.block_weights_[n] ** 2 for n in self.blocks_}
        grand = sum(weighted.values()) or 1.0
        self.variance_shares_ = {n: v / grand for n, v in weighted.items()}
        self.n_features_in_ = {n: len(self.block_columns_[n]) - int(self.flagged_[n]) for n in self.blocks_}
        self._fit_pca(fused, device)
        out = self._finish(fused, device)
        log.info("BlockFuser fitted: %s -> %d columns (variance shares %s)",
                 {n: len(c) for n, c in self.block_columns_.items()}, self.n_features_out_,
                 {n: round(s, 3) for n, s in self.variance_shares_.items()})
        return ref, out

    def transform(self, blocks: Mapping[str, BlockInput], ids: Any = None) -> tuple[pa.Array, np.ndarray]:
        """Apply the fitted transform to (new) blocks; returns ``(ids, fused float32)``.

        Every fitted block must be given, with the same columns; ``ids`` defaults to the union
        of the blocks' ids. Customers a block does not cover get its mean (and flag 0).
        """
        self._check_fitted()
        device = resolve_device(self.device, key="device")
        missing = [n for n in self.blocks_ if n not in blocks]
        extra = sorted(set(blocks) - set(self.blocks_))
        if missing or extra:
            raise InputDataError(f"{_NAME}.transform needs exactly the fitted blocks {self.blocks_}; "
                                 f"missing {missing}, unexpected {extra}")
        parsed = {name: _unpack(name, blocks[name]) for name in self.blocks_}
        ref = _reference_ids(parsed, ids)
        parts = []
        for name in self.blocks_:
            bids, X, _ = parsed[name]
            if X.shape[1] != self.n_features_in_[name]:
                raise InputDataError(f"block {name!r} has {X.shape[1]} columns, but {_NAME} was fitted with "
                                     f"{self.n_features_in_[name]}")
            aligned, present = _align(name, ref, bids, X)
            parts.append(self._standardise(name, aligned, present) * self.block_weights_[name])
        return ref, self._finish(np.hstack(parts), device)

    def _standardise(self, name: str, aligned: np.ndarray, present: np.ndarray) -> np.ndarray:
        d = aligned.shape[1]
        mean, scale = self.means_[name], self.scales_[name]
        Z = (aligned - mean[:d]) / scale[:d]
        Z[~present] = 0.0  # a missing block sits at the block mean
        if self.flagged_[name]:
            flag = (present.astype(np.float64) - mean[d]) / scale[d]
            Z = np.hstack([Z, flag[:, None]])
        return Z

    def _weight(self, name: str, total_var: float) -> float:
        if self.weights == "none":
            return 1.0
        share = 1.0 if self.weights == "equal_variance" else float(self.weights.get(name, 1.0))
        if total_var <= 1e-12:
            log.warning("block %r is constant over the customers: it carries no information", name)
            return 0.0
        return float(np.sqrt(share / total_var))

    def _fit_pca(self, fused: np.ndarray, device: torch.device) -> None:
        self.components_ = self.pca_mean_ = self.explained_variance_ratio_ = None
        p = self.pca_components
        if p is None:
            return
        n, d = fused.shape
        mean, cov = pca.streamed_covariance(fused, device, _CHUNK)
        axes = pca.from_covariance(cov)
        ratio = axes.explained_variance_ratio.cpu().numpy()
        if isinstance(p, float):
            r = pca.n_components_for(ratio, p)
        else:
            r = int(p)
            if r > min(n, d):
                raise InvalidParameterError(f"The 'pca_components' parameter of {_NAME} must be at most "
                                            f"min(n_customers, n_features) = {min(n, d)}. Got {r} instead.")
        self.components_ = axes.components[:r].cpu().numpy()
        self.pca_mean_ = mean
        self.explained_variance_ratio_ = ratio[:r]

    def _finish(self, fused: np.ndarray, device: torch.device) -> np.ndarray:
        if self.components_ is None and not self.l2_normalize:
            out = fused.astype(np.float32)
        else:
            comps = None if self.components_ is None else torch.as_tensor(self.components_, device=device)
            mean = None if self.pca_mean_ is None else torch.as_tensor(self.pca_mean_, device=device)
            chunks = []
            for s in range(0, fused.shape[0], _CHUNK):
                x = torch.as_tensor(fused[s:s + _CHUNK], device=device)
                if comps is not None:
                    x = (x - mean) @ comps.T
                if self.l2_normalize:
                    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
                chunks.append(x.float().cpu().numpy())
            out = np.concatenate(chunks) if chunks else np.zeros((0, self._out_width()), np.float32)
        self.n_features_out_ = out.shape[1]
        return np.ascontiguousarray(out, dtype=np.float32)

    def _out_width(self) -> int:
        if self.components_ is not None:
            return self.components_.shape[0]
        return sum(len(c) for c in self.block_columns_.values())

    @property
    def feature_names_out_(self) -> list[str]:
        """Output column names: ``<block>:<column>`` without PCA, ``pc<i>`` with it."""
        self._check_fitted()
        if self.components_ is not None:
            return [f"pc{i}" for i in range(self.components_.shape[0])]
        return [f"{b}:{c}" for b in self.blocks_ for c in self.block_columns_[b]]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """The JSON half of the saved transform (everything but the arrays)."""
        self._check_fitted()
        return {
            "params": {"weights": dict(self.weights) if isinstance(self.weights, Mapping) else self.weights,
                       "pca_components": self.pca_components, "l2_normalize": self.l2_normalize,
                       "standardize": self.standardize},
            "blocks": self.blocks_,
            "columns": self.block_columns_,
            "flagged": self.flagged_,
            "n_features_in": self.n_features_in_,
            "block_weights": self.block_weights_,
            "variance_shares": self.variance_shares_,
            "coverage": self.coverage_,
            "n_features_out": self.n_features_out_,
            "feature_names_out": self.feature_names_out_,
            "explained_variance_ratio": None if self.explained_variance_ratio_ is None
            else self.explained_variance_ratio_.tolist(),
        }

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (statistics, PCA) and ``<path>.json`` (blocks, columns, weights).

        Returns the JSON path (see :mod:`gpuseg.runtime.artifacts` for the checksum and checks).
        """
        meta = self.to_dict()
        tensors = {}
        for name in meta["blocks"]:
            tensors[f"mean.{name}"] = np.asarray(self.means_[name], dtype=np.float64)
            tensors[f"scale.{name}"] = np.asarray(self.scales_[name], dtype=np.float64)
        if self.components_ is not None:
            tensors["pca.components"] = np.asarray(self.components_, dtype=np.float64)
            tensors["pca.mean"] = np.asarray(self.pca_mean_, dtype=np.float64)
        return save_artifact(path, tensors, meta, kind=KIND, version=SCHEMA_VERSION).meta

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> BlockFuser:
        """Load a transform written by :meth:`save`; it transforms exactly as the saved one."""
        art = load_artifact(path, kind=KIND, version=SCHEMA_VERSION, expected_shapes=_tensor_shapes,
                            numpy=True, what="fusion transform", remedy=_REMEDY)
        meta, tensors = art.meta, art.tensors
        params = meta["params"]
        self = cls(weights=params["weights"], pca_components=params["pca_components"],
                   l2_normalize=params["l2_normalize"], standardize=params["standardize"], device=device)
        self.blocks_ = list(meta["blocks"])
        self.block_columns_ = {k: list(v) for k, v in meta["columns"].items()}
        self.flagged_ = dict(meta["flagged"])
        self.n_features_in_ = dict(meta["n_features_in"])
        self.block_weights_ = dict(meta["block_weights"])
        self.variance_shares_ = dict(meta["variance_shares"])
        self.coverage_ = dict(meta["coverage"])
        self.n_features_out_ = int(meta["n_features_out"])
        self.means_ = {n: tensors[f"mean.{n}"] for n in self.blocks_}
        self.scales_ = {n: tensors[f"scale.{n}"] for n in self.blocks_}
        self.components_ = tensors.get("pca.components")
        self.pca_mean_ = tensors.get("pca.mean")
        ratio = meta.get("explained_variance_ratio")
        self.explained_variance_ratio_ = None if ratio is None else np.asarray(ratio)
        return self


def _tensor_shapes(meta: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors a saved transform holds, and their shapes, from its metadata."""
    width = {n: len(c) for n, c in meta["columns"].items()}
    shapes = {f"{k}.{n}": (w,) for n, w in width.items() for k in ("mean", "scale")}
    if meta["explained_variance_ratio"] is not None:
        r, d = len(meta["explained_variance_ratio"]), sum(width.values())
        shapes |= {"pca.components": (r, d), "pca.mean": (d,)}
    return shapes


def block_from_table(table: pa.Table, columns: Sequence[str] | None = None, *,
                     block: str = "block") -> tuple[pa.Array, np.ndarray, list[str]]:
    """``(ids, X, column_names)`` of a block table keyed by ``customer_id``.

    Numeric and boolean columns give one column each, ``fixed_size_list`` vectors ``dim``
    columns named ``<name>[i]`` (as :func:`gpuseg.runtime.matrix.read_matrix`).

    Parameters
    ----------
    table : pyarrow.Table
        Has ``customer_id`` and the columns.
    columns : sequence of str, optional
        Columns to use, in order; None: every numeric, boolean and vector column.
    block : str
        Block name used in error messages.
    """
    if "customer_id" not in table.column_names:
        raise UserInputError(f"block {block!r} has no customer_id column")
    available = [c for c in table.column_names if c != "customer_id"]
    if columns is None:
        columns = [c for c in available if _usable(table.schema.field(c).type)]
    unknown = [c for c in columns if c not in available]
    if unknown:
        raise UserInputError(f"block {block!r} has no column(s) {unknown}; its columns are {available}")
    parts, names = [], []
    for name in columns:
        col = table[name].combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            dim = col.type.list_size
            parts.append(col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim))
            names += [f"{name}[{i}]" for i in range(dim)]
        elif _usable(col.type):
            parts.append(col.cast(pa.float32()).fill_null(np.nan).to_numpy(zero_copy_only=False).reshape(-1, 1))
            names.append(name)
        else:
            raise UserInputError(f"block {block!r}: column {name!r} of type {col.type} is not numeric")
    if not parts:
        raise UserInputError(f"block {block!r} has no numeric columns")
    return table["customer_id"].combine_chunks(), np.hstack(parts), names


def _usable(t: pa.DataType) -> bool:
    return (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)
            or pa.types.is_fixed_size_list(t))
