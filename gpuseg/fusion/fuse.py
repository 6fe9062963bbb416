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

Everything runs in streamed passes over ``chunk_rows`` customers at a time: one pass for the
per-column moments (merged in float64; the block variances follow from them), one more for the
PCA covariance when asked, and one that yields the fused rows. The working chunks are float32,
so with blocks given as :class:`~gpuseg.runtime.matrix.BlockFile` (read in row batches) and
:meth:`BlockFuser.fit_transform_chunks`, memory is bounded by ``chunk_rows``, not by the number
of customers.

The fitted state is saved as safetensors (numbers) + JSON (block order, column order per
block, weights, flags); nothing is pickled.

``BlockFuser`` is a scikit-learn estimator for parameters (``get_params``/``set_params``,
``clone``, grid searches over its parameters); its input is a dict of blocks and its output an
``(ids, matrix)`` pair, so it is not a drop-in ``Pipeline`` step.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
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
from gpuseg.runtime.matrix import BlockFile, select_columns, table_matrix
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
BlockInput = tuple | BlockFile  # (ids, X), (ids, X, columns) or a block file read in row batches


def _as_ids(ids: Any, where: str) -> pa.Array:
    """Unique, non-null string ids (:func:`~gpuseg.data.convert.as_customer_ids`), errors naming ``where``."""
    try:
        return as_customer_ids(ids)
    except UserInputError as exc:
        raise InputDataError(f"{where}: {exc.args[0]}") from exc


def _unpack(name: str, value: Any) -> tuple[pa.Array, np.ndarray, list[str]]:
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise InputDataError(f"block {name!r} must be a tuple (ids, X) or (ids, X, columns) or a BlockFile, "
                             f"got {type(value).__name__}")
    ids = _as_ids(value[0], f"block {name!r}")
    X = np.asarray(value[1])
    if X.ndim != 2:
        raise InputDataError(f"block {name!r}: X must be 2-D (n_customers, n_columns), got shape {X.shape}")
    if X.shape[0] != len(ids):
        raise InputDataError(f"block {name!r}: {len(ids)} ids but {X.shape[0]} rows in X")
    if not np.issubdtype(X.dtype, np.number) and X.dtype != bool:
        raise InputDataError(f"block {name!r}: X must be numeric, got dtype {X.dtype}")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(1))[:5].tolist()
        raise InputDataError(f"block {name!r}: rows {bad} hold NaN or infinity; impute them upstream")
    columns = list(value[2]) if len(value) == 3 and value[2] is not None else [
        f"{name}[{i}]" for i in range(X.shape[1])]
    if len(columns) != X.shape[1]:
        raise InputDataError(f"block {name!r}: {len(columns)} column names for {X.shape[1]} columns")
    return ids, X, columns


def _open_sources(blocks: Mapping[str, Any], ids: Any, batch_rows: int, scratch_dir: Any) -> tuple[pa.Array, list]:
    """The reference ids and one aligned row source per block (in the blocks' order)."""
    opened = {}
    for name, value in blocks.items():
        if isinstance(value, BlockFile):
            opened[name] = (_as_ids(value.ids(), f"block {name!r}"), value)
        else:
            bids, X, columns = _unpack(name, value)
            opened[name] = (bids, (X, columns))
    if ids is not None:
        ref = _as_ids(ids, "the reference ids")
    else:  # the union of the blocks' ids, in first-seen order
        ref = pa.concat_arrays([o[0] for o in opened.values()])
        ref = ref.unique() if len(ref) else ref
    scratch = _Scratch(scratch_dir)
    sources = []
    for name, (bids, payload) in opened.items():
        if isinstance(payload, BlockFile):
            sources.append(_FileSource(name, ref, bids, payload, batch_rows, scratch))
        else:
            sources.append(_ArraySource(name, ref, bids, *payload))
    return ref, sources


def _positions(ref: pa.Array, ids: pa.Array) -> np.ndarray:
    """Row of each reference customer in the block (-1 where the block does not cover it)."""
    index = pc.index_in(ref, value_set=ids)
    return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _spans(n: int, rows: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, rows):
        yield s, min(n, s + rows)


class _ArraySource:
    """An in-memory block, aligned to the reference ids by row lookup."""

    def __init__(self, name: str, ref: pa.Array, ids: pa.Array, X: np.ndarray, columns: list[str]):
        self.name, self.columns, self._X = name, columns, X
        self.n_columns = X.shape[1]
        self.pos = _positions(ref, ids)
        self.present = self.pos >= 0

    def rows(self, start: int, stop: int) -> np.ndarray:
        """float32 rows ``start:stop`` of the reference order (zeros where missing)."""
        p = self.pos[start:stop]
        out = np.zeros((len(p), self.n_columns), dtype=np.float32)
        m = p >= 0
        out[m] = self._X[p[m]]
        return out

    def close(self) -> None:
        pass


class _Scratch:
    """A temporary folder, made on first use (only a realigned block needs one)."""

    def __init__(self, parent: Any):
        self.parent = None if parent is None else Path(parent)
        self._dir: tempfile.TemporaryDirectory | None = None

    def path(self) -> Path:
        if self._dir is None:
            if self.parent is not None:
                self.parent.mkdir(parents=True, exist_ok=True)
            self._dir = tempfile.TemporaryDirectory(prefix=".fuse-scratch-", dir=self.parent)
        return Path(self._dir.name)

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


class _FileSource:
    """A block file read in row batches and aligned to the reference ids as it streams.

    When the file's covered rows come in reference order (what the upstream jobs write), each pass
    reads the file once, front to back, holding one batch. Otherwise the rows are first scattered
    into a reference-ordered scratch ``.npy`` (mapped only while one batch is written or read).
    """

    def __init__(self, name: str, ref: pa.Array, ids: pa.Array, block: BlockFile, batch_rows: int,
                 scratch: _Scratch):
        self.name, self.columns, self.n_columns = name, list(block.names), len(block.names)
        self._block, self._batch_rows, self._scratch = block, batch_rows, scratch
        self.pos = _positions(ref, ids)
        self.present = self.pos >= 0
        found = self.pos[self.present]
        self._aligned = self._realign(len(ids)) if np.any(np.diff(found) <= 0) else None
        self._reset()

    def _realign(self, n_block: int) -> Path:
        log.info("block %r: rows in another order than the customers; realigning through a scratch file",
                 self.name)
        path = self._scratch.path() / f"{self.name}.aligned.npy"
        target = np.full(n_block, -1, dtype=np.int64)
        target[self.pos[self.present]] = np.flatnonzero(self.present)
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(self.pos), self.n_columns)).flush()
        start = 0
        for x in self._block.batches(self._batch_rows):
            t = target[start:start + len(x)]
            keep = t >= 0
            mm = np.load(path, mmap_mode="r+")
            mm[t[keep]] = x[keep]
            mm.flush()
            del mm  # unmapped: the written pages leave this process's memory
            start += len(x)
        return path

    def _reset(self) -> None:
        self._close_reader()
        self._it = None if self._aligned is not None else self._block.batches(self._batch_rows)
        self._buf = np.zeros((0, self.n_columns), dtype=np.float32)
        self._buf_start = 0
        self._next = 0

    def rows(self, start: int, stop: int) -> np.ndarray:
        """float32 rows ``start:stop`` of the reference order (zeros where missing); passes go front to back."""
        if start < self._next:  # a new pass
            self._reset()
        self._next = stop
        if self._aligned is not None:
            mm = np.load(self._aligned, mmap_mode="r")
            out = np.array(mm[start:stop])
            del mm
            return out
        p = self.pos[start:stop]
        m = p >= 0
        out = np.zeros((len(p), self.n_columns), dtype=np.float32)
        out[m] = self._take(p[m])
        return out

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """File rows ``idx`` (increasing, at or after the current batch)."""
        out = np.empty((len(idx), self.n_columns), dtype=np.float32)
        k = 0
        while k < len(idx):
            end = self._buf_start + len(self._buf)
            if idx[k] >= end:
                self._buf_start, self._buf = end, next(self._it)
                continue
            j = int(np.searchsorted(idx, end))
            out[k:j] = self._buf[idx[k:j] - self._buf_start]
            k = j
        return out

    def _close_reader(self) -> None:
        # a pass that ends before the file does leaves a reader holding a row group: free it now
        if getattr(self, "_it", None) is not None:
            self._it.close()
        self._it = None

    def close(self) -> None:
        self._close_reader()
        self._scratch.close()


class _Moments:
    """Count, mean and sum of squared deviations per column, merged chunk by chunk (Chan et al.) in float64."""

    def __init__(self, d: int):
        self.count = 0
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)

    def update(self, x: np.ndarray) -> None:
        k = len(x)
        if not k:
            return
        mean = x.mean(0, dtype=np.float64)
        dev = x - mean.astype(x.dtype)
        m2 = np.einsum("ij,ij->j", dev, dev, dtype=np.float64)
        n = self.count + k
        delta = mean - self.mean
        self.mean += delta * (k / n)
        self.m2 += m2 + delta**2 * (self.count * k / n)
        self.count = n


def _standardised_moments(mom: _Moments, mean: np.ndarray, scale: np.ndarray, n: int,
                          flagged: bool) -> tuple[float, np.ndarray]:
    """Total variance and column means, over all ``n`` customers, of a standardised block.

    A covered customer's column is ``(x - mean) / scale``, a missing one's 0; the flag column is
    ``(present - mean) / scale``. Sums follow from the block's moments, no pass over the data.
    """
    d, m = len(mom.mean), mom.count
    shift = mom.mean - mean[:d]
    s1 = m * shift / scale[:d]
    s2 = (mom.m2 + m * shift**2) / scale[:d] ** 2
    if flagged:
        mu, sc = mean[d], scale[d]
        s1 = np.append(s1, (m - n * mu) / sc)
        s2 = np.append(s2, (m * (1 - mu) ** 2 + (n - m) * mu**2) / sc**2)
    centre = s1 / n
    return float(np.sum(s2 / n - centre**2)), centre



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
    chunk_rows : int, default=65536
        Customers per streamed chunk. Peak memory is about ``chunk_rows * width * 12`` bytes
        (``width``: the fused columns), beside the output when it is collected in memory.

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
                 standardize: bool = True, device: str | torch.device = "auto", chunk_rows: int = 65536):
        self.weights = weights
        self.pca_components = pca_components
        self.l2_normalize = l2_normalize
        self.standardize = standardize
        self.device = device
        self.chunk_rows = chunk_rows

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
        check_param(_NAME, "chunk_rows", self.chunk_rows, is_int(self.chunk_rows) and self.chunk_rows >= 1,
                    int_range(1))

    def _check_fitted(self) -> None:
        check_fitted(_NAME, hasattr(self, "blocks_"))

    # ------------------------------------------------------------------ fit / transform
    def fit(self, blocks: Mapping[str, BlockInput], ids: Any = None) -> BlockFuser:
        """Learn alignment, standardisation, weights and PCA from the blocks.

        Parameters
        ----------
        blocks : dict
            Block name -> ``(ids, X)`` or ``(ids, X, column_names)`` (``X`` of shape
            ``(n_block_customers, n_columns)``, finite), or a
            :class:`~gpuseg.runtime.matrix.BlockFile` read in row batches.
        ids : array-like of str, optional
            The customers of the output, in order. Default: the union of the blocks' ids in
            first-seen order.

        Returns
        -------
        self
        """
        _, sources = self._fit_sources(blocks, ids, scratch_dir=None)
        for src in sources:
            src.close()
        return self

    def fit_transform(self, blocks: Mapping[str, BlockInput], ids: Any = None) -> tuple[pa.Array, np.ndarray]:
        """Fit on ``blocks`` and return ``(ids, fused float32)`` for the same customers."""
        ref, chunks = self.fit_transform_chunks(blocks, ids)
        return ref, self._collect(len(ref), chunks)

    def fit_transform_chunks(self, blocks: Mapping[str, BlockInput], ids: Any = None, *,
                             scratch_dir: str | Path | None = None) -> tuple[pa.Array, Iterator[np.ndarray]]:
        """Fit on ``blocks``, then give the fused rows chunk by chunk (bounded memory).

        The statistics come from streamed passes over ``chunk_rows`` customers at a time
        (moments and the PCA covariance accumulated in float64, the chunks float32), so with
        :class:`~gpuseg.runtime.matrix.BlockFile` blocks peak memory is set by ``chunk_rows``,
        not by the number of customers.

        Parameters
        ----------
        blocks, ids
            As for :meth:`fit`.
        scratch_dir : path-like, optional
            Where a block file whose rows are in another order than ``ids`` is realigned (a
            temporary ``.npy``, removed when the chunks are exhausted); default: the system's.

        Returns
        -------
        ids : pyarrow.Array
            The output customers, in order.
        chunks : iterator of ndarray
            float32 ``(rows, n_features_out_)`` chunks, in ``ids`` order.
        """
        ref, sources = self._fit_sources(blocks, ids, scratch_dir=scratch_dir)
        return ref, self._chunks(sources, len(ref), resolve_device(self.device, key="device"))

    def transform(self, blocks: Mapping[str, BlockInput], ids: Any = None) -> tuple[pa.Array, np.ndarray]:
        """Apply the fitted transform to (new) blocks; returns ``(ids, fused float32)``.

        Every fitted block must be given, with the same columns; ``ids`` defaults to the union
        of the blocks' ids. Customers a block does not cover get its mean (and flag 0).
        """
        ref, chunks = self.transform_chunks(blocks, ids)
        return ref, self._collect(len(ref), chunks)

    def transform_chunks(self, blocks: Mapping[str, BlockInput], ids: Any = None, *,
                         scratch_dir: str | Path | None = None) -> tuple[pa.Array, Iterator[np.ndarray]]:
        """:meth:`transform`, chunk by chunk: ``(ids, iterator of float32 chunks)`` (see :meth:`fit_transform_chunks`)."""
        self._check_fitted()
        device = resolve_device(self.device, key="device")
        missing = [n for n in self.blocks_ if n not in blocks]
        extra = sorted(set(blocks) - set(self.blocks_))
        if missing or extra:
            raise InputDataError(f"{_NAME}.transform needs exactly the fitted blocks {self.blocks_}; "
                                 f"missing {missing}, unexpected {extra}")
        ref, sources = _open_sources({n: blocks[n] for n in self.blocks_}, ids, self._batch_rows(), scratch_dir)
        for src in sources:
            if src.n_columns != self.n_features_in_[src.name]:
                raise InputDataError(f"block {src.name!r} has {src.n_columns} columns, but {_NAME} was fitted "
                                     f"with {self.n_features_in_[src.name]}")
        return ref, self._chunks(sources, len(ref), device)

    # ------------------------------------------------------------------ streamed passes
    def _batch_rows(self) -> int:
        return int(self.chunk_rows)

    def _fit_sources(self, blocks: Mapping[str, BlockInput], ids: Any, scratch_dir: Any) -> tuple[pa.Array, list]:
        self._check_params()
        if not isinstance(blocks, Mapping) or not blocks:
            raise InputDataError(f"{_NAME}.fit needs a non-empty dict of blocks, got {blocks!r:.80}")
        if isinstance(self.weights, Mapping):
            unknown = sorted(set(self.weights) - set(blocks))
            if unknown:
                raise InvalidParameterError(f"The 'weights' parameter of {_NAME} names blocks {unknown} that are "
                                            f"not among the blocks given to fit: {sorted(blocks)}.")
        device = resolve_device(self.device, key="device")
        ref, sources = _open_sources(blocks, ids, self._batch_rows(), scratch_dir)
        n = len(ref)
        if n < 2:
            raise InputDataError(f"{_NAME}.fit needs at least 2 customers, got {n}")
        # pass 1: per-column moments of every block over the customers it covers
        moments = {src.name: _Moments(src.n_columns) for src in sources}
        for s, e in _spans(n, self._batch_rows()):
            for src in sources:
                moments[src.name].update(src.rows(s, e)[src.present[s:e]])
        self.blocks_, self.block_columns_, self.flagged_ = [], {}, {}
        self.means_, self.scales_, self.block_weights_, self.coverage_ = {}, {}, {}, {}
        total_var, centre = {}, {}
        for src in sources:
            name, mom = src.name, moments[src.name]
            if mom.count == 0:
                raise InputDataError(f"block {name!r} covers none of the {n} customers")
            flagged = mom.count < n
            d = src.n_columns
            mean = mom.mean.copy() if self.standardize else np.zeros(d)
            std = np.sqrt(mom.m2 / mom.count) if self.standardize else np.ones(d)
            columns = list(src.columns)
            if flagged:
                columns.append(f"{name}__present")
                p = mom.count / n
                mean = np.append(mean, p if self.standardize else 0.0)
                std = np.append(std, np.sqrt(p * (1 - p)) if self.standardize else 1.0)
            std = np.where(std > 1e-12, std, 1.0)
            self.blocks_.append(name)
            self.block_columns_[name] = columns
            self.flagged_[name] = flagged
            self.means_[name], self.scales_[name] = mean, std
            self.coverage_[name] = mom.count / n
            # mean and variance over all customers of the standardised columns (missing rows at 0)
            total_var[name], centre[name] = _standardised_moments(mom, mean, std, n, flagged)
        for name in self.blocks_:
            self.block_weights_[name] = self._weight(name, total_var[name])
        weighted = {n_: total_var[n_] * self.block_weights_[n_] ** 2 for n_ in self.blocks_}
        grand = sum(weighted.values()) or 1.0
        self.variance_shares_ = {n_: v / grand for n_, v in weighted.items()}
        self.n_features_in_ = {n_: len(self.block_columns_[n_]) - int(self.flagged_[n_]) for n_ in self.blocks_}
        self.n_features_out_ = self._width()
        fused_mean = np.concatenate([centre[b] * self.block_weights_[b] for b in self.blocks_])
        self._fit_pca(sources, n, fused_mean, device)
        log.info("BlockFuser fitted: %s -> %d columns (variance shares %s)",
                 {b: len(c) for b, c in self.block_columns_.items()}, self.n_features_out_,
                 {b: round(s, 3) for b, s in self.variance_shares_.items()})
        return ref, sources

    def _fit_pca(self, sources: list, n: int, mean: np.ndarray, device: torch.device) -> None:
        self.components_ = self.pca_mean_ = self.explained_variance_ratio_ = None
        p = self.pca_components
        if p is None:
            return
        d = len(mean)
        # pass 2: the covariance of the fused rows, accumulated in float64 on the device
        centre = torch.as_tensor(mean, dtype=torch.float64, device=device)
        cov = torch.zeros(d, d, dtype=torch.float64, device=device)
        for s, e in _spans(n, self._batch_rows()):
            x = torch.as_tensor(self._fused_chunk(sources, s, e), device=device).double() - centre
            cov += x.T @ x
        cov /= max(n - 1, 1)
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
        self.n_features_out_ = r

    def _width(self) -> int:
        return sum(len(c) for c in self.block_columns_.values())

    def _fused_chunk(self, sources: list, start: int, stop: int) -> np.ndarray:
        """Standardised, weighted rows ``start:stop`` of every block side by side (float32)."""
        out = np.empty((stop - start, self._width()), dtype=np.float32)
        j = 0
        for src in sources:
            name = src.name
            x, present = src.rows(start, stop), src.present[start:stop]
            d = x.shape[1]
            mean, scale, w = self.means_[name], self.scales_[name], self.block_weights_[name]
            z = out[:, j:j + d]
            np.subtract(x, mean[:d].astype(np.float32), out=z)
            z *= (w / scale[:d]).astype(np.float32)
            z[~present] = 0.0  # a missing block sits at the block mean
            j += d
            if self.flagged_[name]:
                out[:, j] = (present.astype(np.float32) - np.float32(mean[d])) * np.float32(w / scale[d])
                j += 1
        return out

    def _chunks(self, sources: list, n: int, device: torch.device) -> Iterator[np.ndarray]:
        """Pass 3: fused chunks through the PCA and the L2 normalisation, in row order."""
        comps = None if self.components_ is None else torch.as_tensor(self.components_, dtype=torch.float32,
                                                                      device=device)
        mean = None if comps is None else torch.as_tensor(self.pca_mean_, dtype=torch.float32, device=device)
        try:
            for s, e in _spans(n, self._batch_rows()):
                fused = self._fused_chunk(sources, s, e)
                if comps is None and not self.l2_normalize:
                    yield fused
                    continue
                x = torch.as_tensor(fused, device=device)
                if comps is not None:
                    x = (x - mean) @ comps.T
                if self.l2_normalize:
                    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
                yield np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
        finally:
            for src in sources:
                src.close()

    def _collect(self, n: int, chunks: Iterator[np.ndarray]) -> np.ndarray:
        out = np.empty((n, self.n_features_out_), dtype=np.float32)
        s = 0
        for x in chunks:
            out[s:s + len(x)] = x
            s += len(x)
        return out

    def _weight(self, name: str, total_var: float) -> float:
        if self.weights == "none":
            return 1.0
        share = 1.0 if self.weights == "equal_variance" else float(self.weights.get(name, 1.0))
        if total_var <= 1e-12:
            log.warning("block %r is constant over the customers: it carries no information", name)
            return 0.0
        return float(np.sqrt(share / total_var))

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
    columns named ``<name>[i]`` (as :func:`gpuseg.runtime.matrix.read_matrix`); nulls become
    NaN (an error at fit or transform). For a block file too large to hold, pass a
    :class:`~gpuseg.runtime.matrix.BlockFile` to the fuser instead.

    Parameters
    ----------
    table : pyarrow.Table
        Has ``customer_id`` and the columns.
    columns : sequence of str, optional
        Columns to use, in order; None: every numeric, boolean and vector column.
    block : str
        Block name used in error messages.
    """
    columns, names = select_columns(table.schema, columns, f"block {block!r}")
    return table["customer_id"].combine_chunks(), table_matrix(table, columns), names
