"""``LookalikeIndex``: nearest-neighbour search over customer vectors, exact or approximate.

Backends (``backend=``), with their documented defaults (``benchmarks/bench_lookalike.py``
measures recall@100 against exact search at exactly these settings):

- ``exact``: faiss ``IndexFlatIP``/``IndexFlatL2`` on CPU; on CUDA a tiled matmul + running
  top-k in torch (``engine="torch"``): queries in batches of ``query_batch``, the base in tiles,
  never an N x N (or queries x N) matrix. ``precision="float16"|"bfloat16"`` computes the scores
  in reduced precision, keeps ``k + rerank`` candidates and re-scores them in float32.
- ``ivf_flat``: faiss ``IndexIVFFlat``; ``nlist="auto"`` (4 sqrt(N), at least 39 training points
  per list), ``nprobe="auto"`` (nlist / 8, at least 16).
- ``ivf_pq``: faiss ``IndexIVFPQ`` (``m="auto"``: d/4 sub-quantisers, or the largest divisor of
  d below it; ``nbits=8``), same ``nlist``/``nprobe``, then the ``k * refine`` (default 10) best
  candidates re-scored exactly from the stored float32 vectors.
- ``hnsw``: faiss ``IndexHNSWFlat`` (``M=32``, ``ef_construction=100``, ``ef_search=256``,
  at least ``k``).

With ``device="cuda"`` and a faiss GPU build the flat and IVF indexes move to the GPU; without
one, exact search uses torch on CUDA and the approximate backends stay on CPU (logged). The
backend actually used is in :attr:`LookalikeIndex.backend_used_` and the log.

Metrics: ``ip`` (inner product), ``cosine`` (vectors L2-normalised, then inner product) and
``l2``. Scores are similarities for ``ip``/``cosine`` (descending) and squared L2 distances for
``l2`` (ascending). The index keeps the float32 vectors (``vectors_``), which the expansion
scoring and the re-ranking use; :meth:`save` writes them as ``index.safetensors`` (memory-mapped
on :meth:`load`), ids as ``ids.parquet``, the faiss index (approximate backends) with
``faiss.write_index`` and the parameters as ``index.json`` (one artifact of
:mod:`gpuseg.runtime.artifacts`, whose checksum covers every file); nothing is pickled.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from gpuseg.data.convert import as_customer_ids
from gpuseg.runtime.artifacts import ArtifactError, load_artifact, save_artifact
from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.io import atomic_path, write_parquet
from gpuseg.runtime.validation import (
    InputDataError,
    InvalidParameterError,
    check_device,
    check_fitted,
    check_int,
    check_options,
    check_param,
    int_range,
    is_int,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KIND = "gpuseg.LookalikeIndex"
_NAME = "LookalikeIndex"
_REMEDY = ("rebuild it: re-run `gpuseg lookalike` with lookalike.index.rebuild=true (or build and save the "
           "LookalikeIndex again)")
BACKENDS = ("exact", "ivf_flat", "ivf_pq", "hnsw")
METRICS = ("ip", "cosine", "l2")
#: documented defaults per backend; ``auto`` values depend on the data (see module docstring)
DEFAULTS: dict[str, dict[str, Any]] = {
    "exact": {"engine": "auto", "precision": "float32", "rerank": 64, "query_batch": 4096,
              "tile_elements": 1 << 26},
    "ivf_flat": {"nlist": "auto", "nprobe": "auto", "train_size": "auto", "seed": 0},
    "ivf_pq": {"nlist": "auto", "nprobe": "auto", "m": "auto", "nbits": 8, "refine": 10, "train_size": "auto",
               "seed": 0},
    "hnsw": {"M": 32, "ef_construction": 100, "ef_search": 256},
}
_PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def faiss_has_gpu() -> bool:
    """Whether the installed faiss is a GPU build with a visible GPU."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a dependency
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _distinct_ids(ids: Any) -> pa.Array:
    """``ids`` as :func:`~gpuseg.data.convert.as_customer_ids` gives them, repeats dropped (first kept)."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return as_customer_ids(pc.unique(ids))
    return as_customer_ids(list(dict.fromkeys(ids.tolist() if isinstance(ids, np.ndarray) else ids)))


def _as_matrix(X: Any, name: str, d: int | None = None) -> np.ndarray:
    X = np.asarray(X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X)
    if X.ndim == 1 and d is not None and X.shape[0] == d:
        X = X[None, :]
    if X.ndim != 2:
        raise InputDataError(f"{name} must be 2-D (n, d), got shape {X.shape}")
    if d is not None and X.shape[1] != d:
        raise InputDataError(f"{name} has {X.shape[1]} columns, but the index holds {d}-dim vectors")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise InputDataError(f"{name} holds NaN or infinity (first rows "
                             f"{np.flatnonzero(~np.isfinite(X).all(1))[:5].tolist()})")
    return X


def _normalize(X: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Unit-norm rows: one new float32 matrix, or ``X`` itself divided in place (float32, writable)."""
    norms = np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    if in_place and X.dtype == np.float32 and X.flags.writeable and X.flags.c_contiguous:
        X /= norms
        return X
    return (X / norms).astype(np.float32, copy=False)  # one new matrix, not two


class _FaissStorage:
    """The float32 vectors a faiss ``IndexFlat`` stores, seen as a read-only numpy array.

    The array's base is this object, which holds the index: the memory stays valid as long as
    the array does, even after the LookalikeIndex moves to another faiss index.
    """

    def __init__(self, index: Any):
        self.index = index
        self.__array_interface__ = {"data": (int(index.get_xb()), True), "shape": (index.ntotal, index.d),
                                    "typestr": "<f4", "version": 3}


def torch_knn(base: torch.Tensor, queries: torch.Tensor, k: int, *, metric: str = "ip",
              precision: str = "float32", rerank: int = 64, query_batch: int = 4096,
              tile_elements: int = 1 << 26, base_sqnorms: torch.Tensor | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours by tiled matmul and a running top-k (no queries x N matrix).

    Parameters
    ----------
    base : Tensor of shape (N, d)
        The vectors searched (on the device the search runs on), float32 or the compute dtype.
    queries : Tensor of shape (Q, d)
    k : int
    metric : {"ip", "l2"}
        ``l2`` ranks by ``2 q.x - |x|^2`` and returns squared distances.
    precision : {"float32", "float16", "bfloat16"}
        Dtype of the score matmul. Below float32, ``k + rerank`` candidates are kept and
        re-scored in float32 from ``base``.
    query_batch, tile_elements : int
        Queries per batch; score-tile size in elements (bounds memory to ~4 x tile_elements bytes).

    Returns
    -------
    scores : Tensor (Q, k) float32
        Inner products (descending) or squared L2 distances (ascending).
    rows : Tensor (Q, k) int64
    """
    n = base.shape[0]
    k = min(k, n)
    dtype = _PRECISIONS[precision]
    reduced = dtype != torch.float32
    kc = min(n, k + rerank) if reduced else k
    base_c = base if base.dtype == dtype else base.to(dtype)
    if metric == "l2" and base_sqnorms is None:
        base_sqnorms = base.float().pow(2).sum(1)
    out_s, out_i = [], []
    for qs in range(0, queries.shape[0], query_batch):
        q = queries[qs:qs + query_batch].to(base.device, torch.float32)
        qc = q.to(dtype)
        tile = max(kc, tile_elements // max(q.shape[0], 1))
        best_s = torch.full((q.shape[0], 0), -math.inf, device=q.device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
        for ts in range(0, n, tile):
            s = (qc @ base_c[ts:ts + tile].T).float()
            if metric == "l2":
                s = 2 * s - base_sqnorms[ts:ts + tile]
            top = s.topk(min(kc, s.shape[1]), dim=1)
            best_s, pos = torch.cat([best_s, top.values], 1).topk(min(kc, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, top.indices + ts], 1).gather(1, pos)
        if reduced:
            cand = base[best_i].float()  # (b, kc, d)
            exact = torch.einsum("bkd,bd->bk", cand, q)
            if metric == "l2":
                exact = 2 * exact - base_sqnorms[best_i]
            best_s, pos = exact.topk(k, dim=1)
            best_i = best_i.gather(1, pos)
        else:
            best_s, best_i = best_s[:, :k], best_i[:, :k]
        if metric == "l2":
            best_s = (q.pow(2).sum(1, keepdim=True) - best_s).clamp_min(0)
        out_s.append(best_s)
        out_i.append(best_i)
    return torch.cat(out_s), torch.cat(out_i)


class SeedExpansion:
    """Seed ids -> audiences, for an index of the whole base (:class:`LookalikeIndex`) or of one
    rank's shard of it (:class:`gpuseg.lookalike.sharded.ShardedIndex`).

    A subclass has ``ids_`` (the ids of every row it answers for, in row order), ``_check_built``,
    ``_expand_rows(seed_rows, exclude_rows, **kwargs)``, which scores rows of ``ids_``, and
    ``vectors_of(rows)``, the vectors of rows of ``ids_`` as the scoring sees them.
    """

    ids_: pa.Array

    def _check_built(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _expand_rows(self, seed_rows: dict[Any, np.ndarray], exclude_rows: np.ndarray | None,
                     **kwargs: Any) -> dict[Any, pa.Table]:  # pragma: no cover - overridden
        raise NotImplementedError

    def rows_of(self, ids: Any) -> tuple[np.ndarray, list[str]]:
        """Row positions of the known ``ids`` and the list of unknown ones (in input order; repeats ignored)."""
        self._check_built()
        arr = _distinct_ids(ids)
        index = pc.index_in(arr, value_set=self.ids_)
        known = index.is_valid().to_numpy(zero_copy_only=False)
        unknown = arr.filter(pa.array(~known)).to_pylist()
        return index.drop_null().to_numpy(zero_copy_only=False).astype(np.int64), unknown

    def expand(self, seed_ids: Any, size: int | None = None, threshold: float | None = None, mode: str = "centroid",
               exclude: Any = None, *, top_m: int = 5, on_unknown: str = "error",
               candidates: str = "auto", include_seeds: bool = False) -> pa.Table:
        """Expand seed customers into a ranked audience of lookalikes (seeds excluded unless asked).

        Parameters
        ----------
        seed_ids : sequence of str, or dict of name -> sequence of str
            One seed list, or several (one audience per name, computed in one batched pass).
        size : int, optional
            Audience size per query; capped (with a warning) at the customers available.
        threshold : float, optional
            Keep only customers scoring at least this (for ``l2``: the score is minus the squared
            distance). At least one of ``size`` and ``threshold`` is needed.
        mode : {"max", "mean_top_m", "centroid"}
            Similarity to the nearest seed, mean of the ``top_m`` best seed similarities, or
            similarity to the seeds' centroid.
        exclude : sequence of str, optional
            Customers never returned (e.g. those already in a segment); unknown ids are ignored.
        top_m : int
            Seeds averaged by ``mean_top_m``.
        on_unknown : {"error", "warn"}
            Seed ids not in the index: a :class:`~gpuseg.runtime.errors.UserInputError` listing a
            few, or a warning (the known seeds are used).
        candidates : {"auto", "all", "index"}
            ``all`` scores every customer exactly (streamed in tiles on the device); ``index``
            scores only the union of the index's ``size + n_seeds + n_excluded`` neighbours of
            every seed (or of the centroid), widened until no score tied with the last is cut
            off, a superset of the exact answer for ``max`` and ``centroid`` when the backend is
            exact; ``auto``: ``all`` unless that is more than 2e9 similarity evaluations and a
            size is given.
        include_seeds : bool
            Rank the seeds among the audience too (each scored like any customer).

        Returns
        -------
        pyarrow.Table
            ``rank`` (1-based), ``customer_id``, ``score``, ``nearest_seed``, ``nearest_seed_score``
            (plus ``query`` first when ``seed_ids`` is a dict).
        """
        self._check_built()
        queries = seed_ids if isinstance(seed_ids, dict) else {None: seed_ids}
        seed_rows = {name: self._seed_rows(name, seeds, on_unknown) for name, seeds in queries.items()}
        exclude_rows = None
        if exclude is not None:
            exclude_rows, _ = self.rows_of(exclude)
        tables = self._expand_rows(seed_rows, exclude_rows, size=size, threshold=threshold, mode=mode, top_m=top_m,
                                   candidates=candidates, include_seeds=include_seeds)
        if not isinstance(seed_ids, dict):
            return tables[None]
        parts = [t.add_column(0, "query", pa.array([str(name)] * t.num_rows, pa.string()))
                 for name, t in tables.items()]
        return pa.concat_tables(parts)

    def _seed_rows(self, name: Any, seeds: Any, on_unknown: str) -> np.ndarray:
        from gpuseg.runtime.errors import UserInputError

        check_options(f"{_NAME}.expand", "on_unknown", on_unknown, ("error", "warn"))
        label = "" if name is None else f" of query {name!r}"
        if isinstance(seeds, str):
            seeds = [seeds]
        seeds = list(dict.fromkeys(seeds if not isinstance(seeds, (pa.Array, pa.ChunkedArray)) else seeds.to_pylist()))
        if not seeds:
            raise UserInputError(f"the seed list{label} is empty: give at least one customer id")
        rows, unknown = self.rows_of(seeds)
        if unknown:
            listed = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            msg = f"{len(unknown)} of {len(seeds)} seed ids{label} are not in the index: {listed}"
            if on_unknown == "error" or len(rows) == 0:
                raise UserInputError(msg + ("" if len(rows) else " (no known seed left)"))
            log.warning("%s; using the %d known seeds", msg, len(rows))
        return rows


class LookalikeIndex(SeedExpansion):
    """Nearest-neighbour index over customer vectors, with seed-audience expansion.

    Parameters
    ----------
    backend : {"exact", "ivf_flat", "ivf_pq", "hnsw"}, default="exact"
    metric : {"ip", "cosine", "l2"}, default="ip"
    device : str or torch.device, default="auto"
        ``cuda`` runs exact search in torch (or faiss GPU when installed).
    **params
        Backend parameters; see :data:`DEFAULTS` and the module docstring.

    Attributes
    ----------
    ids_ : pyarrow.Array of str
    vectors_ : ndarray (N, d) float32 (normalised for ``cosine``)
    backend_used_ : str
        What actually searches, e.g. ``"faiss.IndexIVFFlat(nlist=400, nprobe=50) on cpu"``.
    params_ : dict
        Resolved parameters (``auto`` replaced by values).
    """

    def __init__(self, backend: str = "exact", metric: str = "ip", device: str | torch.device = "auto",
                 **params: Any):
        self.backend = backend
        self.metric = metric
        self.device = device
        self.params = params

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        check_options(_NAME, "backend", self.backend, BACKENDS)
        check_options(_NAME, "metric", self.metric, METRICS)
        check_device(_NAME, self.device)
        known = DEFAULTS[self.backend]
        unknown = sorted(set(self.params) - set(known))
        if unknown:
            raise InvalidParameterError(f"{_NAME}(backend={self.backend!r}) got unknown parameter(s) {unknown}; "
                                        f"its parameters are {sorted(known)}.")
        p = {**known, **self.params}
        for name in ("nlist", "nprobe", "m", "train_size"):
            if name in p:
                check_param(_NAME, name, p[name], p[name] == "auto" or (is_int(p[name]) and p[name] >= 1),
                            f"{int_range(1)} or 'auto'")
        for name in ("M", "ef_construction", "ef_search", "refine", "query_batch", "tile_elements", "nbits"):
            if name in p:
                check_int(_NAME, name, p[name], low=1)
        if "rerank" in p:
            check_int(_NAME, "rerank", p["rerank"], low=0)
        if "engine" in p:
            check_options(_NAME, "engine", p["engine"], ("auto", "faiss", "torch"))
        if "precision" in p:
            check_options(_NAME, "precision", p["precision"], _PRECISIONS)

    def _check_built(self) -> None:
        check_fitted(_NAME, hasattr(self, "vectors_"), verb="built", call="build")

    # ------------------------------------------------------------------ build / add
    def build(self, X: Any, ids: Any, *, copy: bool = True) -> LookalikeIndex:
        """Index the vectors ``X`` (N, d) of the customers ``ids`` (N distinct strings).

        Parameters
        ----------
        X : array-like (N, d)
        ids : array-like of str (N,)
        copy : bool, default True
            False lets ``cosine`` normalise a float32 ``X`` in place (the caller's array then
            holds unit rows) instead of making a normalised copy: at 1M x 400 that is 1.6 GB.

        Returns
        -------
        self

        Notes
        -----
        With the CPU faiss exact engine, :attr:`vectors_` is then a read-only view of the
        vectors faiss stores, not a second copy of them.
        """
        self._check_params()
        X = _as_matrix(X, "X")
        ids = as_customer_ids(ids)
        if X.shape[0] != len(ids):
            raise InputDataError(f"X has {X.shape[0]} rows but {len(ids)} ids were given")
        if X.shape[0] == 0:
            raise InputDataError("cannot build an index over 0 vectors")
        self._device = resolve_device(self.device, key="device")
        t0 = time.perf_counter()
        self.vectors_ = _normalize(X, in_place=not copy) if self.metric == "cosine" else X
        self.ids_ = ids
        self.d_ = X.shape[1]
        self.params_ = self._resolve(X.shape[0], X.shape[1])
        self._make_engine(train=True)
        self._add_to_engine(self.vectors_)
        self._share_vectors()
        self.build_seconds_ = time.perf_counter() - t0
        log.info("lookalike index: %d x %d vectors, %s, built in %.2fs", X.shape[0], X.shape[1],
                 self.backend_used_, self.build_seconds_)
        return self

    def add(self, X: Any, ids: Any) -> LookalikeIndex:
        """Add vectors of new customers (ids must not be in the index yet)."""
        self._check_built()
        X = _as_matrix(X, "X", self.d_)
        ids = as_customer_ids(ids)
        if X.shape[0] != len(ids):
            raise InputDataError(f"X has {X.shape[0]} rows but {len(ids)} ids were given")
        clash = pc.is_in(ids, value_set=self.ids_)
        if pc.any(clash).as_py():
            dup = ids.filter(clash).to_pylist()[:5]
            raise InputDataError(f"ids already in the index (e.g. {dup}); ids must be distinct")
        X = _normalize(X) if self.metric == "cosine" else X
        shared = isinstance(getattr(self.vectors_, "base", None), _FaissStorage)
        self.vectors_ = np.concatenate([np.asarray(self.vectors_), X])
        self.ids_ = pa.concat_arrays([self.ids_, ids])
        if shared:
            # views handed out earlier point into the current faiss storage, which an add could
            # move: a fresh index over every vector leaves that one (and those views) intact
            self._make_engine(train=False)
            self._add_to_engine(self.vectors_)
            self._share_vectors()
        else:
            self._add_to_engine(X)
        return self

    def _share_vectors(self) -> None:
        """With the CPU faiss flat engine, keep one copy of the vectors: faiss's own (read-only)."""
        import faiss

        if self.backend == "exact" and isinstance(self._faiss, faiss.IndexFlat) and self._faiss.ntotal == len(self.ids_):
            self.vectors_ = np.asarray(_FaissStorage(self._faiss))

    def _resolve(self, n: int, d: int) -> dict[str, Any]:
        p = {**DEFAULTS[self.backend], **self.params}
        if self.backend in ("ivf_flat", "ivf_pq"):
            if p["nlist"] == "auto":
                p["nlist"] = int(max(1, min(round(4 * math.sqrt(n)), n // 39)))
            p["nlist"] = min(int(p["nlist"]), n)
            if p["nprobe"] == "auto":
                p["nprobe"] = int(min(p["nlist"], max(16, p["nlist"] // 8)))
            if p["train_size"] == "auto":
                p["train_size"] = int(min(n, 256 * p["nlist"]))
        if self.backend == "ivf_pq":
            if p["m"] == "auto":
                target = max(1, d // 4)
                p["m"] = max(m for m in range(1, target + 1) if d % m == 0)
            if d % int(p["m"]):
                raise InvalidParameterError(f"The 'm' parameter of {_NAME} must divide the dimension {d}. "
                                            f"Got {p['m']!r} instead.")
            if n < 2 ** int(p["nbits"]):
                raise InputDataError(f"ivf_pq with nbits={p['nbits']} needs at least {2 ** int(p['nbits'])} "
                                     f"vectors to train, got {n}; use backend='exact' or lower nbits")
        if self.backend == "exact" and p["engine"] == "auto":
            p["engine"] = "torch" if self._device.type == "cuda" and not faiss_has_gpu() else "faiss"
        return p

    @property
    def _mips(self) -> bool:
        return self.backend == "hnsw" and self.metric == "ip"

    def _faiss_metric(self):
        import faiss

        return faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT

    def _make_engine(self, *, train: bool, index: Any = None) -> None:
        """Create (and train) the search structure; ``index`` is a loaded faiss index."""
        import faiss

        p, d, n = self.params_, self.d_, np.asarray(self.vectors_).shape[0]
        on_gpu = self._device.type == "cuda" and faiss_has_gpu()
        self._faiss = None
        self._base = None
        if self.backend == "exact" and p["engine"] == "torch":
            self._base = torch.empty((0, d), device=self._device)
            self.backend_used_ = (f"torch tiled matmul + top-k ({p['precision']}) on {self._device}")
            return
        if index is None:
            if self.backend == "exact":
                index = faiss.IndexFlatL2(d) if self.metric == "l2" else faiss.IndexFlatIP(d)
            elif self.backend == "hnsw":
                if self._mips:
                    # HNSW graphs search inner products poorly on vectors of unequal norms: index
                    # [x, sqrt(R^2 - |x|^2)] under L2, whose order is the inner product's (Bachrach 2014)
                    p.setdefault("mips_radius", float(np.linalg.norm(np.asarray(self.vectors_), axis=1).max()))
                    index = faiss.IndexHNSWFlat(d + 1, int(p["M"]), faiss.METRIC_L2)
                else:
                    index = faiss.IndexHNSWFlat(d, int(p["M"]), self._faiss_metric())
                index.hnsw.efConstruction = int(p["ef_construction"])
            else:
                quantizer = faiss.IndexFlatL2(d) if self.metric == "l2" else faiss.IndexFlatIP(d)
                if self.backend == "ivf_flat":
                    index = faiss.IndexIVFFlat(quantizer, d, int(p["nlist"]), self._faiss_metric())
                else:
                    index = faiss.IndexIVFPQ(quantizer, d, int(p["nlist"]), int(p["m"]), int(p["nbits"]),
                                             self._faiss_metric())
                index.own_fields = True
                quantizer.this.disown()
                if train:
                    rng = np.random.default_rng(int(p["seed"]))
                    size = int(p["train_size"])
                    sample = np.sort(rng.choice(n, size, replace=False)) if size < n else np.arange(n)
                    index.cp.seed = int(p["seed"])
                    index.train(np.asarray(self.vectors_)[sample])
        if on_gpu and self.backend != "hnsw":
            self._gpu_res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_res, self._device.index or 0, index)
        if self.backend in ("ivf_flat", "ivf_pq"):
            index.nprobe = int(p["nprobe"])
        self._faiss = index
        where = "gpu" if on_gpu and self.backend != "hnsw" else "cpu"
        detail = ""
        if self.backend == "hnsw":
            detail = f"(M={p['M']}, ef_search={p['ef_search']})"
        elif self.backend == "ivf_flat":
            detail = f"(nlist={p['nlist']}, nprobe={p['nprobe']})"
        elif self.backend == "ivf_pq":
            detail = (f"(nlist={p['nlist']}, nprobe={p['nprobe']}, m={p['m']}, nbits={p['nbits']}, "
                      f"refine={p['refine']})")
        name = {"exact": "IndexFlatL2" if self.metric == "l2" else "IndexFlatIP", "hnsw": "IndexHNSWFlat",
                "ivf_flat": "IndexIVFFlat", "ivf_pq": "IndexIVFPQ"}[self.backend]
        self.backend_used_ = f"faiss.{name}{detail} on {where}"
        if self._device.type == "cuda" and where == "cpu":
            log.warning("lookalike: %s runs on CPU (%s)", self.backend,
                        "faiss has no GPU HNSW" if self.backend == "hnsw" else "faiss is a CPU-only build")

    def _add_to_engine(self, X: np.ndarray) -> None:
        if self._base is not None:
            added = torch.as_tensor(np.asarray(X), device=self._device)
            # the first add shares the vectors' memory (on CPU) instead of copying them into an empty base
            self._base = added if self._base.shape[0] == 0 else torch.cat([self._base, added])
            self._sqnorms = self._base.pow(2).sum(1) if self.metric == "l2" else None
        elif self._faiss is not None:
            X = np.ascontiguousarray(X, dtype=np.float32)
            if self._mips:
                radius = float(self.params_["mips_radius"])
                sq = (X.astype(np.float64) ** 2).sum(1)
                if (sq > radius ** 2 * (1 + 1e-6)).any():
                    log.warning("hnsw/ip: added vectors are longer than those at build; their ranking is approximate")
                X = np.hstack([X, np.sqrt(np.maximum(radius ** 2 - sq, 0))[:, None]]).astype(np.float32)
            self._faiss.add(X)

    # ------------------------------------------------------------------ search
    @property
    def ntotal(self) -> int:
        """Number of indexed customers."""
        self._check_built()
        return len(self.ids_)

    def search(self, Q: Any, k: int, *, return_rows: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed customers of each query vector.

        Parameters
        ----------
        Q : array-like (n_queries, d)
            Query vectors (normalised here for ``cosine``).
        k : int
            Neighbours per query; more than the index holds is capped, with a warning.
        return_rows : bool
            Return row positions (int64, -1 = none) instead of customer ids.

        Returns
        -------
        scores : ndarray (n_queries, k) float32
            Similarities (descending) for ip/cosine, squared L2 distances (ascending) for l2.
        ids : ndarray (n_queries, k)
            Customer ids (object array, None where fewer than k were found) or rows.
        """
        self._check_built()
        check_int(f"{_NAME}.search", "k", k, low=1)
        if k > self.ntotal:
            log.warning("k=%d is more than the %d indexed customers: returning %d", k, self.ntotal, self.ntotal)
            k = self.ntotal
        Q = _as_matrix(Q, "Q", self.d_)
        if self.metric == "cosine":
            Q = _normalize(Q)
        scores, rows = self._search_rows(Q, k)
        if return_rows:
            return scores, rows
        ids = np.asarray(self.ids_.to_numpy(zero_copy_only=False), dtype=object)
        out = np.where(rows >= 0, ids[np.clip(rows, 0, None)], None)
        return scores, out

    def _search_rows(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.params_
        metric = "l2" if self.metric == "l2" else "ip"
        if self._base is not None:
            s, i = torch_knn(self._base, torch.as_tensor(Q, device=self._device), k, metric=metric,
                             precision=p["precision"], rerank=int(p["rerank"]), query_batch=int(p["query_batch"]),
                             tile_elements=int(p["tile_elements"]), base_sqnorms=self._sqnorms)
            return s.float().cpu().numpy(), i.cpu().numpy().astype(np.int64)
        if self.backend == "hnsw":
            self._faiss.hnsw.efSearch = max(int(p["ef_search"]), k)
            if self._mips:
                _, cand = self._faiss.search(np.hstack([Q, np.zeros((Q.shape[0], 1), np.float32)]), k)
                return self._rescore(Q, cand, k)
        if self.backend == "ivf_pq" and int(p["refine"]) > 1:
            kc = min(self.ntotal, k * int(p["refine"]))
            _, cand = self._faiss.search(Q, kc)
            return self._rescore(Q, cand, k)
        scores, rows = self._faiss.search(Q, k)
        return scores.astype(np.float32), rows.astype(np.int64)

    def _rescore(self, Q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidate rows from the stored vectors; keep the best ``k``."""
        V = np.asarray(self.vectors_)
        valid = cand >= 0
        vec = V[np.where(valid, cand, 0)]  # (q, kc, d)
        if self.metric == "l2":
            s = -((vec - Q[:, None, :]) ** 2).sum(-1)
        else:
            s = np.einsum("qkd,qd->qk", vec, Q)
        s = np.where(valid, s, -np.inf)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(s, order, 1)
        rows = np.where(np.isfinite(best), np.take_along_axis(cand, order, 1), -1)
        scores = -best if self.metric == "l2" else best
        return scores.astype(np.float32), rows.astype(np.int64)

    # ------------------------------------------------------------------ expansion
    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of the given rows (normalised for ``cosine``), as the scoring sees them."""
        self._check_built()
        return np.array(self.vectors_[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    def _expand_rows(self, seed_rows: dict[Any, np.ndarray], exclude_rows: np.ndarray | None,
                     **kwargs: Any) -> dict[Any, pa.Table]:
        from gpuseg.lookalike.expand import expand_rows

        return expand_rows(self, seed_rows, exclude_rows=exclude_rows, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the index to the folder ``path`` (created): index.json, index.safetensors (the
        vectors), ids.parquet and, for the approximate backends, index.faiss."""
        import faiss

        self._check_built()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        write_parquet(folder / "ids.parquet", pa.table({"customer_id": self.ids_}))
        sides = [folder / "ids.parquet"]
        faiss_file = None
        if self._faiss is not None and self.backend != "exact":
            index = self._faiss
            if "Gpu" in type(index).__name__:
                index = faiss.index_gpu_to_cpu(index)
            faiss_file = "index.faiss"
            with atomic_path(folder / faiss_file) as tmp:
                faiss.write_index(index, str(tmp))
            sides.append(folder / faiss_file)
        else:
            (folder / "index.faiss").unlink(missing_ok=True)
        (folder / "vectors.npy").unlink(missing_ok=True)  # where an older gpuseg kept the vectors
        meta = {"backend": self.backend, "metric": self.metric, "params": self.params,
                "params_resolved": self.params_, "n": self.ntotal, "d": self.d_, "faiss_index": faiss_file,
                "backend_used": self.backend_used_}
        save_artifact(folder / "index", {"vectors": np.asarray(self.vectors_)}, meta, kind=KIND,
                      version=SCHEMA_VERSION, side_files=sides)
        return folder

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", *, mmap: bool = True) -> LookalikeIndex:
        """Load an index written by :meth:`save`; it searches exactly as the saved one.

        Every file is checked first (:func:`~gpuseg.runtime.artifacts.load_artifact`): a missing,
        truncated or altered one is an :class:`~gpuseg.runtime.artifacts.ArtifactError` that says
        to rebuild the index, not a traceback.
        """
        import faiss

        folder = Path(path)
        art = load_artifact(folder / "index", kind=KIND, version=SCHEMA_VERSION, numpy=True, mmap=mmap,
                            expected_shapes=lambda m: {"vectors": (m["n"], m["d"])},
                            what="lookalike index", remedy=_REMEDY, config_key="lookalike.index.rebuild")
        meta = art.meta
        self = cls(meta["backend"], meta["metric"], device, **meta["params"])
        self._check_params()
        self._device = resolve_device(device, key="device")
        self.vectors_ = art.tensors["vectors"]
        self.ids_ = _read(pq.read_table, art.side_files["ids.parquet"])["customer_id"].combine_chunks()
        if len(self.ids_) != meta["n"]:
            raise ArtifactError(f"cannot load the lookalike index: '{art.side_files['ids.parquet']}' holds "
                                f"{len(self.ids_)} ids for {meta['n']} vectors; {_REMEDY}")
        self.d_ = int(meta["d"])
        self.params_ = dict(meta["params_resolved"])
        if self.backend == "exact":
            self.params_["engine"] = self._resolve(len(self.ids_), self.d_)["engine"]
            self._make_engine(train=False)
            self._add_to_engine(np.asarray(self.vectors_))
            self._share_vectors()  # the memory-mapped file is then let go
        else:
            index = _read(faiss.read_index, art.side_files[meta["faiss_index"]])
            self._make_engine(train=False, index=index)
        log.info("lookalike index loaded from %s: %s", folder, self.backend_used_)
        return self


def _read(reader, path: Path):
    """``reader(path)``, its failure on a damaged file an :class:`ArtifactError` naming the file."""
    try:
        return reader(str(path))
    except (OSError, RuntimeError, ValueError, pa.ArrowException) as exc:
        raise ArtifactError(f"cannot load the lookalike index: '{path}' cannot be read ({exc}); {_REMEDY}",
                            config_key="lookalike.index.rebuild") from exc


def merge_topk(scores: np.ndarray, rows: np.ndarray, k: int, *, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each query's candidates: by score, ties by the lower row; missing (-1) last.

    Parameters
    ----------
    scores, rows : ndarray (n_queries, m)
        Candidates, e.g. every shard's top-k side by side; row -1 is no candidate.
    k : int
        Kept per query (at most ``m``).
    descending : bool
        True for similarities (ip, cosine), False for distances (l2).

    Returns
    -------
    scores : ndarray (n_queries, k) float32
    rows : ndarray (n_queries, k) int64
    """
    scores, rows = np.asarray(scores), np.asarray(rows, dtype=np.int64)
    missing = rows < 0
    key = np.where(missing, np.inf, -scores.astype(np.float64) if descending else scores.astype(np.float64))
    tie = np.where(missing, np.iinfo(np.int64).max, rows)
    order = np.lexsort((tie, key), axis=-1)[:, :k]
    return (np.take_along_axis(scores, order, 1).astype(np.float32),
            np.take_along_axis(rows, order, 1).astype(np.int64))


def search_sharded(index: LookalikeIndex, Q: Any, k: int, *, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each query over every rank's shard, with global rows.

    Under ``torch.distributed`` each rank holds the rows ``[offset, offset + index.ntotal)`` of
    the whole base in its own ``index`` (e.g. the bounds of
    :func:`gpuseg.runtime.distributed.shard_bounds`) and passes the same queries; each searches
    its shard, the lists are gathered and merged (:func:`merge_topk`: by score, ties by global
    row), so every rank gets the same answer. With the exact backend it is the single-process
    search over the whole base (ties ordered by row). Outside a process group this is
    ``index.search`` with rows shifted by ``offset``.

    Returns
    -------
    scores : ndarray (n_queries, k) float32
    rows : ndarray (n_queries, k) int64
        Global rows (-1 where the base holds fewer than ``k``).
    """
    from gpuseg.runtime import distributed as ddp

    index._check_built()
    check_int(f"{_NAME}.search_sharded", "k", k, low=1)
    total = int(ddp.all_reduce_(torch.tensor([index.ntotal], dtype=torch.int64)).item())
    if k > total:
        log.warning("k=%d is more than the %d indexed customers: returning %d", k, total, total)
        k = total
    local_k = min(k, index.ntotal)
    scores, rows = index.search(Q, local_k, return_rows=True)
    descending = index.metric != "l2"
    n_queries = scores.shape[0]
    padded_scores = np.full((n_queries, k), -np.inf if descending else np.inf, np.float32)
    padded_rows = np.full((n_queries, k), -1, np.int64)
    padded_scores[:, :local_k] = scores
    padded_rows[:, :local_k] = np.where(rows >= 0, rows + int(offset), -1)
    all_scores = ddp.all_gather_rows(torch.from_numpy(padded_scores)).numpy()
    all_rows = ddp.all_gather_rows(torch.from_numpy(padded_rows)).numpy()
    world = ddp.rank_and_world()[1]
    if all_scores.shape[0] != world * n_queries:
        raise InputDataError(f"search_sharded: every rank must pass the same queries (this rank has {n_queries}, "
                             f"{all_scores.shape[0]} over all ranks)")

    def side_by_side(a: np.ndarray) -> np.ndarray:
        """(world * Q, k) in rank order -> (Q, world * k): each query's candidates from every shard."""
        return a.reshape(world, n_queries, k).transpose(1, 0, 2).reshape(n_queries, world * k)

    return merge_topk(side_by_side(all_scores), side_by_side(all_rows), k, descending=descending)
