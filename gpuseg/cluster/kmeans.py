"""``MiniBatchKMeans``: scikit-learn-style k-means for CPU and CUDA, in memory or out of core.

What it does differently from the tools users have today:

- greedy k-means++ seeding vectorised on the device, ``n_init`` candidates judged on a
  held-out validation sample (faiss seeds at random);
- mini-batch epochs with per-centre counts and EWA-inertia early stopping (scikit-learn's
  algorithm), then ``refine_passes`` full Lloyd passes streamed over the data, which close the
  last percent of inertia that pure mini-batch leaves (scikit-learn ``MiniBatchKMeans``);
- chunked assignment: no ``N x K`` matrix, data streamed from ``np.memmap``/iterators, all
  rows used (faiss silently trains on 256 points per centroid);
- ``partial_fit``, data-parallel ``fit`` under ``torch.distributed``, and safe save/load
  (safetensors + JSON, no pickle).

It is a scikit-learn estimator (``BaseEstimator`` with the cluster and transformer mixins):
``clone``, ``Pipeline``, ``GridSearchCV`` and ``check_estimator`` work with it.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)

from gpuseg.cluster import _engine as eng
from gpuseg.cluster._assign import (
    PRECISIONS,
    PreparedCenters,
    all_distances_chunk,
    assign_chunk,
    auto_chunk_rows,
    matmul_precision,
)
from gpuseg.cluster._source import ResidentSource, Source, _is_batch_iterable, make_source
from gpuseg.cluster._threads import TORCH
from gpuseg.runtime import distributed as ddp
from gpuseg.runtime.artifacts import load_artifact, save_artifact
from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.progress import progress_bar
from gpuseg.runtime.validation import (
    InputDataError,
    InvalidParameterError,
    check_array_input,
    check_bool,
    check_device,
    check_fitted,
    check_int,
    check_options,
    check_param,
    check_param_names,
    check_random_state,
    check_real,
    int_range,
    is_int,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KIND = "gpuseg.MiniBatchKMeans"
_NAME = "MiniBatchKMeans"
_REMEDY = "re-run `gpuseg segment` (or fit and save the MiniBatchKMeans again)"


class MiniBatchKMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin,
                      BaseEstimator):
    """Mini-batch k-means with k-means++ seeding and Lloyd refinement, on CPU or CUDA.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    init : {"k-means++", "random"} or array of shape (n_clusters, n_features)
        Seeding method, run on a sample of ``init_size`` rows.
    n_init : int or "auto", default=3
        Seedings tried; the one with the lowest inertia on a validation sample wins
        (``"auto"``: 3, or 1 when ``init`` is an array).
    batch_size : int, default=4096
        Rows per mini-batch update.
    max_iter : int, default=100
        Maximum number of mini-batch epochs (passes over the data) before refinement.
    max_no_improvement : int or None, default=10
        Stop the mini-batch phase after this many consecutive batches without improvement of
        the exponentially weighted average of the batch inertia (None disables it).
    tol : float, default=0.0
        Stop when the squared centre shift of one mini-batch step or Lloyd pass is at most
        ``tol`` (0 disables the mini-batch test; Lloyd passes then stop only once centres no
        longer move).
    refine_passes : int, default=2
        Full Lloyd passes (assignment of every row, centres set to the means) after the
        mini-batch phase.
    reassignment_ratio : float, default=0.01
        Centres whose count is below this fraction of the largest count are re-seeded from
        batch points (as in scikit-learn).
    init_size : int or None, default=None
        Rows used for seeding (and as many again for validation);
        ``max(3 * batch_size, 20 * n_clusters)`` when None.
    compute_labels : bool, default=True
        Compute ``labels_`` and ``inertia_`` with a final pass over the data.
    compute_precision : {"float32", "tf32", "bf16"}, default="float32"
        Precision of the distance GEMM on CUDA (CPU always uses float32). Distances that are
        kept (inertia) are recomputed in float32 from the chosen centre.
    chunk_size : int or None, default=None
        Rows per assignment chunk; by default sized so the ``chunk x K`` block is ~4 MiB on CPU
        and ~512 MiB on CUDA (bounded by free memory).
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
        Compute device.
    random_state : int, numpy.random.Generator or None, default=None
        Seed; the same int gives the same result on CPU (whatever ``n_threads``).
    n_threads : int, "torch" or None, default=None
        CPU threads for torch's intra-op pool, set per phase and restored afterwards. None
        chooses per phase: one thread for small parallel regions (k-means++ seeding, the
        default mini-batch steps), and for the chunked passes up to
        ``min(free cores, torch.get_num_threads())``, free cores being the process's CPU
        affinity minus what other processes keep busy when the phase starts. An int uses that
        many threads everywhere; ``"torch"`` leaves ``torch.get_num_threads()`` alone (the
        behaviour before this parameter existed). On a busy machine torch's spinning OpenMP
        threads otherwise stall each other (see ``gpuseg.cluster._threads``). Ignored on CUDA.
    verbose : int, default=0
        Log progress at INFO level (and show a progress bar on a terminal) when > 0.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    labels_ : ndarray of shape (n_samples,), int32
        Labels of the rows passed to ``fit`` (this rank's rows under torch.distributed).
    inertia_ : float
        Sum of squared distances to the nearest centre over all rows (all ranks).
    n_iter_ : int
        Passes over the data: mini-batch epochs started plus Lloyd passes.
    n_steps_ : int
        Mini-batch updates performed.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Column names of ``X`` at fit, when ``X`` was a DataFrame with string column names.

    Notes
    -----
    In-memory array-likes (lists, numpy arrays, pandas DataFrames) are checked by
    scikit-learn's ``validate_data`` (feature names, ``n_features_in_``, no sparse or complex
    data); tensors, memory maps, iterables and callables are streamed as they are. Computation
    is float32 whatever the input dtype: ``transform`` returns float32 and ``predict`` int32
    (for tensor input: tensors on ``X``'s device). ``fit`` takes no ``sample_weight``.

    Data-parallel fit: launch with ``torchrun``, call
    ``torch.distributed.init_process_group("nccl" or "gloo")``, and have each rank call
    ``fit`` on its own shard with the same parameters. Seeding runs on rank 0 from a sample
    gathered from every rank; each mini-batch step and Lloyd pass all-reduces centre sums and
    counts, so all ranks end with identical centres. ``partial_fit`` works the same way (every
    rank must make the same number of calls).

    Saved models (:meth:`save`) are two files, ``<path>.safetensors`` (``cluster_centers``,
    ``counts``) and ``<path>.json`` (parameters, ``n_features_in_``, ``feature_names_in_``
    when fitted on a DataFrame, ``inertia_``, library versions, ``kind``, ``schema_version`` and
    one SHA-256 over both files, see :mod:`gpuseg.runtime.artifacts`); nothing is pickled.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(1000, 4)).astype("float32")
    >>> km = MiniBatchKMeans(3, random_state=0, device="cpu").fit(X)
    >>> km.cluster_centers_.shape
    (3, 4)
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init=3,
        batch_size=4096,
        max_iter=100,
        max_no_improvement=10,
        tol=0.0,
        refine_passes=2,
        reassignment_ratio=0.01,
        init_size=None,
        compute_labels=True,
        compute_precision="float32",
        chunk_size=None,
        device="auto",
        random_state=None,
        n_threads=None,
        verbose=0,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.max_no_improvement = max_no_improvement
        self.tol = tol
        self.refine_passes = refine_passes
        self.reassignment_ratio = reassignment_ratio
        self.init_size = init_size
        self.compute_labels = compute_labels
        self.compute_precision = compute_precision
        self.chunk_size = chunk_size
        self.device = device
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    # ------------------------------------------------------------------ scikit-learn plumbing

    def set_params(self, **params) -> MiniBatchKMeans:
        """Set constructor parameters (scikit-learn API); unknown names are an error."""
        check_param_names(self, params)
        return super().set_params(**params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        # computed in float32 on every device: float32 in, float32 out
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "cluster_centers_")

    @property
    def _n_features_out(self) -> int:
        """Width of ``transform``'s output (for ``get_feature_names_out``)."""
        return self.cluster_centers_.shape[0]

    def _check_input(self, X, *, reset: bool):
        """Array-likes through scikit-learn's checks; tensors, memmaps and streams as they are."""
        if _is_streamed(X):
            if reset:
                self.__dict__.pop("feature_names_in_", None)
            return X
        return check_array_input(self, X, reset=reset)

    def __repr__(self) -> str:
        # the changed parameters in signature order (scikit-learn's repr sorts them by name)
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
            if p.name != "self"
        }
        changed = []
        for k, d in defaults.items():
            v = getattr(self, k)
            same = v is d if isinstance(v, np.ndarray) or isinstance(d, np.ndarray) else v == d
            if not same:
                changed.append(f"{k}={'array' if isinstance(v, np.ndarray) else repr(v)}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate_params(self) -> None:
        check_int(_NAME, "n_clusters", self.n_clusters, low=1)
        if not isinstance(self.init, str):
            try:
                arr = np.asarray(self.init, dtype=np.float64)
            except (TypeError, ValueError):
                arr = None
            if arr is None or arr.ndim != 2:
                check_options(_NAME, "init", self.init, ("k-means++", "random"),
                              extra=" or an array-like of shape (n_clusters, n_features)")
            elif arr.shape[0] != self.n_clusters:
                raise InvalidParameterError(
                    f"The shape of the initial centers {arr.shape} does not match the number "
                    f"of clusters {self.n_clusters}."
                )
            elif not np.isfinite(arr).all():
                raise InvalidParameterError("The 'init' array of MiniBatchKMeans contains NaN or infinity.")
        else:
            check_options(_NAME, "init", self.init, ("k-means++", "random"),
                          extra=" or an array-like of shape (n_clusters, n_features)")
        if self.n_init != "auto":
            check_int(_NAME, "n_init", self.n_init, low=1)
        check_int(_NAME, "batch_size", self.batch_size, low=1)
        check_int(_NAME, "max_iter", self.max_iter, low=0)
        check_int(_NAME, "max_no_improvement", self.max_no_improvement, low=0, allow_none=True)
        check_real(_NAME, "tol", self.tol, low=0.0)
        check_int(_NAME, "refine_passes", self.refine_passes, low=0)
        check_real(_NAME, "reassignment_ratio", self.reassignment_ratio, low=0.0)
        check_int(_NAME, "init_size", self.init_size, low=1, allow_none=True)
        check_bool(_NAME, "compute_labels", self.compute_labels)
        check_options(_NAME, "compute_precision", self.compute_precision, PRECISIONS)
        check_int(_NAME, "chunk_size", self.chunk_size, low=1, allow_none=True)
        check_device(_NAME, self.device)
        check_random_state(_NAME, self.random_state)
        check_param(_NAME, "n_threads", self.n_threads,
                    self.n_threads is None or (isinstance(self.n_threads, str)
                                               and self.n_threads == TORCH)
                    or (is_int(self.n_threads) and self.n_threads >= 1),
                    f"{int_range(1)}, {TORCH!r} or None")
        check_int(_NAME, "verbose", self.verbose, low=0)

    def _n_init(self) -> int:
        if not isinstance(self.init, str):
            return 1
        return 3 if self.n_init == "auto" else int(self.n_init)

    def _settings(self, n_features: int) -> eng.Settings:
        chunk = self.chunk_size or auto_chunk_rows(self.n_clusters, n_features, self._device)
        return eng.Settings(
            n_clusters=self.n_clusters,
            batch_size=self.batch_size,
            chunk_rows=int(chunk),
            precision=self.compute_precision,
            reassignment_ratio=float(self.reassignment_ratio),
            max_no_improvement=self.max_no_improvement,
            tol=float(self.tol),
            n_threads=self.n_threads,
        )

    def _seed(self) -> int:
        """One integer seed, shared by every rank of a process group."""
        rs = self.random_state
        if isinstance(rs, np.random.Generator):
            seed = int(rs.integers(0, 2**62))
        elif rs is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 2)
        else:
            seed = int(rs)
        return ddp.broadcast_int(seed)

    def _check_n_samples(self, n_total: int) -> None:
        if n_total < self.n_clusters:
            raise InputDataError(f"n_samples={n_total} should be >= n_clusters={self.n_clusters}.")

    def _check_features(self, src: Source) -> None:
        d = src.n_features
        if d is not None and d != self.n_features_in_:
            raise InputDataError(
                f"X has {d} features, but {_NAME} is expecting {self.n_features_in_} features "
                "as input."
            )

    # ------------------------------------------------------------------------------- fitting

    def fit(self, X, y=None) -> MiniBatchKMeans:
        """Compute the clustering.

        Parameters
        ----------
        X : array-like, torch.Tensor, np.memmap, iterable or callable
            ``(n_samples, n_features)`` data: a numpy array or memory map, a torch tensor on any
            device, or batches of rows from a callable returning a fresh iterator per pass (an
            iterable that can be iterated again, e.g. a list of arrays, also works). Under
            torch.distributed, each rank passes its own shard.
        y : ignored

        Returns
        -------
        self
        """
        self._validate_params()
        self._device = resolve_device(self.device, key="device")
        for stale in ("labels_", "inertia_"):  # a refit must not keep the last fit's answers
            self.__dict__.pop(stale, None)
        X = self._check_input(X, reset=True)
        src = make_source(X, self._device)
        if not src.multi_pass:
            raise InputDataError(
                "Input X is a one-shot iterator, but fit needs several passes over the data; "
                "pass a callable returning a fresh iterator (or use partial_fit per batch)."
            )
        seed = self._seed()
        rank, world = ddp.rank_and_world()
        shared_rng = np.random.default_rng(seed)
        local_rng = np.random.default_rng([seed, rank + 1])

        self._initialise(src, shared_rng, local_rng)
        settings = self._settings(self.n_features_in_)
        state = self._state
        n_total = self._n_total

        bar = progress_bar(self.verbose > 0, total=self.max_iter + self.refine_passes,
                           desc="k-means", unit="pass")
        epochs = 0
        with bar:
            for epoch in range(self.max_iter):
                epochs += 1
                converged = eng.minibatch_epoch(src, state, settings, n_total, local_rng)
                bar.update(1)
                self._log(f"epoch {epoch + 1}: {state.n_steps} steps, EWA inertia/row "
                          f"{state.ewa:.6g}" if state.ewa is not None else f"epoch {epoch + 1}")
                if converged:
                    break
            passes = 0
            for p in range(self.refine_passes):
                acc = eng.lloyd_pass(src, state.centers, settings)
                new, _ = eng.lloyd_update(acc, state.centers)
                shift = float(((new - state.centers) ** 2).sum())
                state.centers, state.counts = new, acc.counts.clone()
                passes += 1
                bar.update(1)
                self._log(f"Lloyd pass {p + 1}: inertia {float(acc.inertia):.8g} (before update), "
                          f"centre shift {shift:.3g}")
                if shift <= self.tol:
                    break
        self.n_iter_ = epochs + passes
        self.n_steps_ = state.n_steps
        self._finish(src, settings)
        return self

    def _log(self, msg: str) -> None:
        log.log(logging.INFO if self.verbose else logging.DEBUG, msg)

    def _initialise(self, src: Source, shared_rng, local_rng) -> None:
        """Draw the seeding sample, choose the centres, set the per-centre state."""
        init_size = self.init_size or max(3 * self.batch_size, 20 * self.n_clusters)
        if src.n_features is not None:
            self._check_init_shape(src.n_features)
        init_x, valid_x, n_total = eng.draw_init_samples(src, init_size, local_rng, shared_rng)
        self._check_n_samples(n_total)
        d = int(src.n_features if src.n_features is not None else init_x.shape[1])
        self._check_init_shape(d)
        self.n_features_in_ = d
        settings = self._settings(d)
        centers = eng.choose_initial_centers(
            self.init, init_x, valid_x, self._n_init(), settings, shared_rng
        )
        self._state = eng.KMeansState(
            centers=centers.to(self._device, torch.float32).contiguous(),
            counts=torch.zeros(self.n_clusters, dtype=torch.float64, device=self._device),
        )
        self._n_total = n_total
        self._rng = local_rng

    def _check_init_shape(self, d: int) -> None:
        if not isinstance(self.init, str):
            shape = np.asarray(self.init).shape
            if shape[1] != d:
                raise InvalidParameterError(
                    f"The shape of the initial centers {shape} does not match the number of "
                    f"features of the data {d}."
                )

    def _finish(self, src: Source, settings: eng.Settings) -> None:
        state = self._state
        self.cluster_centers_ = state.centers.cpu().numpy().copy()
        if self.compute_labels:
            labels, inertia = eng.assign_all(src, state.centers, settings)
            self.labels_ = labels.numpy() if labels is not None else np.empty(0, np.int32)
            self.inertia_ = inertia

    def partial_fit(self, X, y=None) -> MiniBatchKMeans:
        """Update the centres with one mini-batch step on ``X`` (seeding on the first call).

        Parameters
        ----------
        X : array-like, torch.Tensor or iterable of batches
            One batch of rows; it is used whole as one mini-batch (assigned chunk by chunk).
            The first call needs at least ``n_clusters`` rows.

        Returns
        -------
        self
        """
        first = not hasattr(self, "_state")
        if first:
            self._validate_params()
            self._device = resolve_device(self.device, key="device")
        X = self._check_input(X, reset=first)
        src = make_source(X, self._device)
        if first:
            seed = self._seed()
            rank, _ = ddp.rank_and_world()
            shared_rng = np.random.default_rng(seed)
            local_rng = np.random.default_rng([seed, rank + 1])
            # seed on this batch: one pass over it gives the sample (and validates it)
            init_size = self.init_size or max(3 * self.batch_size, 20 * self.n_clusters)
            init_x, valid_x, n_total = eng.draw_init_samples(src, init_size, local_rng, shared_rng)
            self._check_n_samples(n_total)
            self.n_features_in_ = int(init_x.shape[1])
            self._check_init_shape(self.n_features_in_)
            settings = self._settings(self.n_features_in_)
            centers = eng.choose_initial_centers(self.init, init_x, valid_x, self._n_init(),
                                                 settings, shared_rng)
            self._state = eng.KMeansState(
                centers=centers.contiguous(),
                counts=torch.zeros(self.n_clusters, dtype=torch.float64, device=self._device),
            )
            self._rng = local_rng
            self.n_iter_ = 0
        self._check_features(src)
        settings = self._settings(self.n_features_in_)
        state = self._state
        # the whole call is one mini-batch: accumulate it chunk by chunk, then update once
        if isinstance(src, ResidentSource):
            xb = src.resident
        else:
            batch = list(src.chunks(settings.chunk_rows))
            self._check_features(src)
            xb = torch.cat(batch) if batch else None
        n_rows = 0 if xb is None else xb.shape[0]
        n_total = torch.tensor([float(n_rows)], dtype=torch.float64)
        ddp.all_reduce_(n_total)
        with settings.chunk_threads(state.centers.device, n_rows, self.n_features_in_):
            eng.minibatch_step(xb, state, settings, max(int(n_total), 1), self._rng)
        self.n_steps_ = state.n_steps
        self.cluster_centers_ = state.centers.cpu().numpy().copy()
        return self

    # ----------------------------------------------------------------------------- inference

    def _check_fitted(self) -> None:
        check_fitted(_NAME, hasattr(self, "cluster_centers_"))

    def _inference_centers(self) -> torch.Tensor:
        state = getattr(self, "_state", None)
        if state is not None:
            return state.centers
        return torch.as_tensor(self.cluster_centers_, dtype=torch.float32, device=self._device)

    def _threads(self, X):
        """Thread limit for one inference call over ``X`` (see ``n_threads``)."""
        self._check_fitted()
        shape = getattr(X, "shape", None)
        settings = self._settings(self.n_features_in_)
        rows = int(shape[0]) if shape is not None and len(shape) == 2 else settings.chunk_rows
        return settings.chunk_threads(self._device, rows, self.n_features_in_)

    def _passes(self, X):
        """Yield ``(chunk, labels, sqdist)`` for every chunk of ``X`` with the fitted centres."""
        self._check_fitted()
        X = self._check_input(X, reset=False)
        src = make_source(X, self._device)
        centers = self._inference_centers()
        settings = self._settings(self.n_features_in_)
        prep = PreparedCenters(centers, settings.precision)
        first = True
        with matmul_precision(settings.precision, self._device):
            for x in src.chunks(settings.chunk_rows):
                if first:
                    self._check_features(src)
                    if x.shape[1] != self.n_features_in_:
                        raise InputDataError(
                            f"X has {x.shape[1]} features, but {_NAME} is expecting "
                            f"{self.n_features_in_} features as input."
                        )
                    first = False
                yield (x, prep, *assign_chunk(x, prep))

    def predict(self, X):
        """Index of the nearest centre for each row.

        Returns
        -------
        labels : ndarray of int32, or torch.Tensor (int64, on ``X``'s device) when ``X`` is a
            torch tensor.
        """
        with self._threads(X):
            parts = [labels for _, _, labels, _ in self._passes(X)]
        out = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        if isinstance(X, torch.Tensor):
            return out.to(X.device)
        return out.to(torch.int32).cpu().numpy()

    def transform(self, X):
        """Euclidean distances of each row to every centre, ``(n_samples, n_clusters)``.

        Returns a torch tensor on ``X``'s device when ``X`` is a tensor, else an ndarray.
        """
        with self._threads(X):
            parts = [all_distances_chunk(x, prep) for x, prep, _, _ in self._passes(X)]
        out = torch.cat(parts)
        if isinstance(X, torch.Tensor):
            return out.to(X.device)
        return out.cpu().numpy()

    def fit_predict(self, X, y=None):
        """``fit(X)`` then return ``labels_``."""
        if not self.compute_labels:
            raise InvalidParameterError("fit_predict needs compute_labels=True.")
        return self.fit(X).labels_

    def fit_transform(self, X, y=None):
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)

    def score(self, X, y=None) -> float:
        """Opposite of the inertia of ``X`` (higher is better, as in scikit-learn)."""
        total = 0.0
        with self._threads(X):
            for _, _, _, d2 in self._passes(X):
                total += float(d2.sum(dtype=torch.float64))
        return -total

    # ------------------------------------------------------------------------------ save/load

    def save(self, path) -> Path:
        """Write ``<path>.safetensors`` (centres, counts) and ``<path>.json`` (metadata).

        ``path`` may end in ``.json`` or ``.safetensors``; the other file is written beside
        it. Both writes are atomic; the JSON records one SHA-256 over the tensors and the
        metadata, so an edited or mismatched pair is detected at load time
        (:mod:`gpuseg.runtime.artifacts`).

        Returns
        -------
        pathlib.Path
            The JSON file.
        """
        self._check_fitted()
        state = getattr(self, "_state", None)
        counts = (state.counts if state is not None else torch.zeros(self.n_clusters)).double()
        tensors = {
            "cluster_centers": torch.as_tensor(self.cluster_centers_).float(),
            "counts": counts,
        }
        params = self.get_params()
        params["device"] = str(params["device"])
        if isinstance(params["random_state"], np.random.Generator):
            params["random_state"] = None
        if not isinstance(params["init"], str):
            params["init"] = np.asarray(params["init"]).tolist()
        meta = {
            "params": params,
            "n_features_in_": int(self.n_features_in_),
            "feature_names_in_": (list(map(str, self.feature_names_in_))
                                  if hasattr(self, "feature_names_in_") else None),
            "n_clusters": int(self.n_clusters),
            "inertia_": getattr(self, "inertia_", None),
            "n_iter_": getattr(self, "n_iter_", None),
            "n_steps_": getattr(self, "n_steps_", None),
        }
        return save_artifact(path, tensors, meta, kind=KIND, version=SCHEMA_VERSION).meta

    @classmethod
    def load(cls, path, device="auto") -> MiniBatchKMeans:
        """Load a model written by :meth:`save`; it predicts exactly as the saved one.

        Parameters
        ----------
        path : path-like
            The prefix given to ``save``, or either of the two files.
        device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
            Where to run inference.
        """
        art = load_artifact(path, kind=KIND, version=SCHEMA_VERSION, what="k-means model",
                            remedy=_REMEDY, expected_shapes=lambda m: {
                                "cluster_centers": (m["n_clusters"], m["n_features_in_"]),
                                "counts": (m["n_clusters"],)})
        meta, tensors = art.meta, art.tensors
        params = dict(meta["params"])
        params["device"] = device
        if isinstance(params.get("init"), list):
            params["init"] = np.asarray(params["init"], dtype=np.float32)
        model = cls(**params)
        check_device(_NAME, device)
        model._device = resolve_device(device, key="device")
        centers = tensors["cluster_centers"]
        model.cluster_centers_ = centers.numpy().copy()
        model.n_features_in_ = int(meta["n_features_in_"])
        if meta.get("feature_names_in_") is not None:
            model.feature_names_in_ = np.asarray(meta["feature_names_in_"], dtype=object)
        for attr in ("inertia_", "n_iter_", "n_steps_"):
            if meta.get(attr) is not None:
                setattr(model, attr, meta[attr])
        model._state = eng.KMeansState(
            centers=centers.to(model._device).contiguous(),
            counts=tensors["counts"].to(model._device),
            n_steps=int(meta.get("n_steps_") or 0),
        )
        model._rng = np.random.default_rng(params.get("random_state"))
        return model


def _is_streamed(X) -> bool:
    """Tensors, memory maps, iterables of batches and callables: not for ``validate_data``."""
    if sparse.issparse(X):  # iterable over rows, but scikit-learn names it in its error
        return False
    if isinstance(X, (torch.Tensor, np.memmap, Source)):
        return True
    if callable(X) and not hasattr(X, "__array__"):
        return True
    return _is_batch_iterable(X)
