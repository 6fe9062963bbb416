"""Churn propensity: a logistic regression or one-hidden-layer MLP in torch, plus its metrics.

:class:`ChurnModel` standardises the features (statistics from the training rows). As a logistic
regression (``hidden=0``) it is fitted exactly by L-BFGS; as an MLP it trains with Adam on
mini-batches drawn from a seeded generator (same seed, same CPU result) and, when
``holdout_fraction > 0``, keeps the weights of the epoch with the lowest validation loss. Either
way a hold-out gives ``validation_`` metrics (ROC AUC, log loss, Brier score, calibration table).

The metrics are plain numpy functions so that a job can score any model the same way:
:func:`roc_auc` (from :mod:`gpuseg.runtime.metrics`), :func:`calibration_table` (equal-width bins)
and :func:`risk_tier` (``low`` / ``medium`` / ``high`` from score thresholds, so that "high churn
risk (score > 0.7)" is one filter).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import check_classification_targets, type_of_target

from gpuseg.runtime.artifacts import ArtifactFiles, load_artifact, save_artifact
from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.logistic import fit_logistic
from gpuseg.runtime.metrics import check_binary_labels, check_scores, roc_auc  # noqa: F401  (roc_auc re-exported)
from gpuseg.runtime.validation import (
    InputDataError,
    check_array_input,
    check_fitted,
    check_int,
    check_param,
    check_real,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "gpuseg.ChurnModel"
_NAME = "ChurnModel"


# -------------------------------------------------------------------------------------- metrics
def calibration_table(y: Any, p: Any, n_bins: int = 10) -> dict[str, list]:
    """Observed positive rate against mean predicted probability in equal-width bins of ``p``.

    Parameters
    ----------
    y : array-like of shape (n,)
        0/1 labels.
    p : array-like of shape (n,)
        Predicted probabilities in [0, 1].
    n_bins : int, default=10
        Bins over [0, 1]; the last bin includes 1.

    Returns
    -------
    dict of lists
        ``bin_lower``, ``bin_upper``, ``mean_predicted``, ``observed_rate`` (NaN for empty bins)
        and ``count``, one entry per bin.
    """
    check_int("calibration_table", "n_bins", n_bins, low=1)
    yy = check_binary_labels(y)
    pp = check_scores(p, yy.size)
    if ((pp < 0) | (pp > 1)).any():
        raise InputDataError("The 'p' parameter must hold probabilities in [0, 1].")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.floor(pp * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    sum_p = np.bincount(b, weights=pp, minlength=n_bins)
    sum_y = np.bincount(b, weights=yy, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        rate = np.where(count > 0, sum_y / count, np.nan)
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "mean_predicted": mean_p.tolist(),
        "observed_rate": rate.tolist(),
        "count": count.tolist(),
    }


def risk_tier(p: Any, thresholds: tuple[float, float] = (0.3, 0.7)) -> np.ndarray:
    """``"low"`` (p <= low), ``"medium"`` (low < p <= high) or ``"high"`` (p > high) per score.

    Parameters
    ----------
    p : array-like of shape (n,)
        Churn scores.
    thresholds : (float, float), default=(0.3, 0.7)
        Increasing ``(low, high)`` cut points.

    Returns
    -------
    ndarray of str (object dtype), shape (n,)
    """
    try:
        low, high = (float(t) for t in thresholds)
    except (TypeError, ValueError):
        low = high = float("nan")
    check_param("risk_tier", "thresholds", thresholds, low < high, "two increasing numbers (low, high)")
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    tiers = np.array(["low", "medium", "high"], dtype=object)
    return tiers[(pp > low).astype(np.int64) + (pp > high).astype(np.int64)]


def binary_metrics(y: Any, p: Any, n_bins: int = 10) -> dict[str, Any]:
    """ROC AUC, log loss, Brier score, positive rate and calibration table of scores ``p``."""
    yy = check_binary_labels(y)
    pp = check_scores(p, yy.size)
    q = np.clip(pp, 1e-12, 1 - 1e-12)
    return {
        "n": int(yy.size),
        "positive_rate": float(yy.mean()) if yy.size else float("nan"),
        "roc_auc": roc_auc(yy, pp),
        "log_loss": float(-(yy * np.log(q) + (1 - yy) * np.log(1 - q)).mean()),
        "brier": float(((pp - yy) ** 2).mean()),
        "calibration": calibration_table(yy, pp, n_bins),
    }


# ---------------------------------------------------------------------------------------- model
def _check_X(estimator: ChurnModel, X: Any, *, reset: bool) -> np.ndarray:
    """Features checked the scikit-learn way (2-D, numeric, ``n_features_in_``, feature names), dtype kept.

    A numeric numpy array comes back as is, not copied: the rows are converted to float64 (and
    checked to be finite) by :func:`_finite_rows`, a batch at a time where the caller scores.
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    return np.asarray(check_array_input(estimator, X, reset=reset))


def _finite_rows(X: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of a checked ``X`` as finite float64; the error names the first bad rows of ``X``."""
    arr = np.asarray(X[start:stop], dtype=np.float64)
    if not np.isfinite(arr).all():
        # the rows before ``start`` were found finite: the first bad rows of X are from here on
        rows = _nonfinite_rows(X, start, limit=5, batch=max(len(arr), 1))
        raise InputDataError(f"The 'X' parameter must be finite (impute NaN first); non-finite values "
                             f"in rows {rows}.")
    return arr


def _nonfinite_rows(X: np.ndarray, start: int, *, limit: int, batch: int) -> list[int]:
    """The first ``limit`` rows of ``X`` from ``start`` on holding NaN or infinity, read ``batch`` rows at a time."""
    rows: list[int] = []
    for lo in range(start, X.shape[0], batch):
        bad = ~np.isfinite(np.asarray(X[lo:lo + batch], dtype=np.float64)).all(axis=1)
        rows.extend((lo + np.flatnonzero(bad)[:limit - len(rows)]).tolist())
        if len(rows) >= limit:
            break
    return rows


def _binary_target(estimator: ChurnModel, y: Any, n: int) -> np.ndarray:
    """``y`` as 0/1 (the second of its two sorted classes is 1), setting ``classes_``."""
    if y is None:
        raise InputDataError("ChurnModel requires y to be passed, but the target y is None.")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected; it is read as 1d.",
                      DataConversionWarning, stacklevel=3)
        y = y.ravel()
    if y.ndim != 1 or y.shape[0] != n:
        raise InputDataError(f"The 'X' and 'y' parameters must have the same number of rows (y 1-d). Got "
                             f"{n} rows and y of shape {y.shape}.")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise InputDataError("Input y contains NaN or infinity: every row needs a known label.")
    try:
        check_classification_targets(y)
    except ValueError as exc:
        raise InputDataError(str(exc)) from None
    classes = np.unique(y)
    if len(classes) > 2:
        raise InputDataError(f"Only binary classification is supported. The type of the target is "
                             f"{type_of_target(y)}: ChurnModel needs two classes in y (churned and retained), "
                             f"got {len(classes)}: {classes[:5].tolist()}.")
    if len(classes) < 2:
        raise InputDataError(f"ChurnModel needs exactly two classes in y (churned and retained); got one: "
                             f"{classes.tolist()}.")
    estimator.classes_ = classes
    return (y == classes[1]).astype(np.int64)


class _Net(torch.nn.Module):
    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        if hidden > 0:
            self.hidden = torch.nn.Linear(n_features, hidden)
            self.out = torch.nn.Linear(hidden, 1)
        else:
            self.hidden = None
            self.out = torch.nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hidden is not None:
            x = torch.relu(self.hidden(x))
        return self.out(x).squeeze(-1)


class ChurnModel(ClassifierMixin, BaseEstimator):
    """Churn classifier: logistic regression (``hidden=0``) or a one-hidden-layer MLP, in torch.

    Parameters
    ----------
    hidden : int, default=0
        Hidden units; 0 is a logistic regression.
    l2 : float, default=1e-3
        L2 penalty on the weights (not the biases), added to the mean log loss.
    epochs : int, default=50
        Passes over the training rows (MLP only: ``hidden=0`` is fitted exactly by L-BFGS, see
        :mod:`gpuseg.runtime.logistic`, and ignores ``epochs``, ``lr`` and ``batch_size``; with a
        hold-out it picks its penalty among ``l2 x (1, 10, 100, 1000)``, kept in ``l2_``).
    lr : float, default=1e-2
        Adam learning rate.
    batch_size : int, default=1024
    holdout_fraction : float, default=0.0
        Fraction of the rows of ``fit`` held out (stratified by class) for validation and
        best-epoch selection; 0 trains on all rows for ``epochs``.
    device : str or torch.device, default="auto"
    random_state : int, default=0
        Seeds the initial weights, the hold-out split and the mini-batch order.

    Attributes
    ----------
    n_features_in_ : int
    mean_, scale_ : ndarray
        Standardisation statistics of the training rows.
    best_epoch_ : int
        Epoch kept (the last without hold-out).
    history_ : list of dict
        Train (and validation) loss per epoch.
    validation_ : dict or None
        :func:`binary_metrics` on the hold-out rows.
    """

    def __init__(self, *, hidden: int = 0, l2: float = 1e-3, epochs: int = 50, lr: float = 1e-2,
                 batch_size: int = 1024, holdout_fraction: float = 0.0, device: Any = "auto",
                 random_state: int = 0):
        self.hidden = hidden
        self.l2 = l2
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.holdout_fraction = holdout_fraction
        self.device = device
        self.random_state = random_state

    def _check_params(self) -> None:
        check_int(_NAME, "hidden", self.hidden, low=0)
        check_real(_NAME, "l2", self.l2, low=0.0)
        check_int(_NAME, "epochs", self.epochs, low=1)
        check_real(_NAME, "lr", self.lr, low=0.0, closed_low=False)
        check_int(_NAME, "batch_size", self.batch_size, low=1)
        check_real(_NAME, "holdout_fraction", self.holdout_fraction, low=0.0, high=1.0, closed_high=False)
        check_int(_NAME, "random_state", self.random_state, low=0)

    def _split(self, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.holdout_fraction == 0:
            return np.arange(y.size), np.zeros(0, dtype=np.int64)
        val = []
        for cls in (0, 1):
            idx = np.flatnonzero(y == cls)
            rng.shuffle(idx)
            val.append(idx[: int(round(self.holdout_fraction * idx.size))])
        val_idx = np.sort(np.concatenate(val))
        train = np.ones(y.size, dtype=bool)
        train[val_idx] = False
        return np.flatnonzero(train), val_idx

    def fit(self, X: Any, y: Any) -> ChurnModel:
        """Train on features ``X`` and churn labels ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite features (fused matrix, RFM+ block...).
        y : array-like of shape (n_samples,)
            1 = churned, 0 = retained.

        Returns
        -------
        self
        """
        self._check_params()
        Xa = _finite_rows(_check_X(self, X, reset=True))  # fitting reads every row in float64
        ya = _binary_target(self, y, Xa.shape[0])
        rng = np.random.default_rng(self.random_state)
        train, val = self._split(ya, rng)
        if np.unique(ya[train]).size < 2:
            raise InputDataError("ChurnModel.fit needs both classes (churned and retained) among "
                                 "the training rows of 'y'.")
        device = resolve_device(self.device, key="device")
        self.mean_ = Xa[train].mean(axis=0)
        scale = Xa[train].std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)  # constant columns stay at 0 after centring

        def tensor(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            xs = (Xa[idx] - self.mean_) / self.scale_
            return (torch.as_tensor(xs, dtype=torch.float32, device=device),
                    torch.as_tensor(ya[idx], dtype=torch.float32, device=device))

        xt, yt = tensor(train)
        xv, yv = tensor(val)
        gen = torch.Generator().manual_seed(int(self.random_state))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state))
            net = _Net(self.n_features_in_, int(self.hidden)).to(device)
        if int(self.hidden) == 0:
            return self._fit_logistic(net, xt, yt, xv, yv, ya, val, Xa, device)
        opt = torch.optim.Adam(net.parameters(), lr=float(self.lr))
        weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
        loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
        n = xt.shape[0]
        bs = min(int(self.batch_size), n)
        self.history_ = []
        best = (float("inf"), 0, None)
        for epoch in range(1, int(self.epochs) + 1):
            net.train()
            order = torch.randperm(n, generator=gen).to(device)
            total = 0.0
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                loss = loss_fn(net(xt[idx]), yt[idx])
                penalty = sum((w**2).sum() for w in weights)
                opt.zero_grad()
                (loss + float(self.l2) * penalty).backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            record = {"epoch": epoch, "train_loss": total / n}
            if val.size:
                net.eval()
                with torch.no_grad():
                    v_loss = float(loss_fn(net(xv), yv))
                record["val_loss"] = v_loss
                if v_loss < best[0]:
                    best = (v_loss, epoch, {k: t.detach().clone() for k, t in net.state_dict().items()})
            self.history_.append(record)
        if best[2] is not None:
            net.load_state_dict(best[2])
            self.best_epoch_ = best[1]
        else:
            self.best_epoch_ = int(self.epochs)
        self._net = net.eval()
        self.validation_ = None
        if val.size:
            self.validation_ = binary_metrics(ya[val], self.churn_probability(Xa[val]))
            log.info("churn model: validation ROC AUC %.4f at epoch %d",
                     self.validation_["roc_auc"], self.best_epoch_)
        return self

    def _fit_logistic(self, net: _Net, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor,
                      ya: np.ndarray, val: np.ndarray, Xa: np.ndarray, device: torch.device) -> ChurnModel:
        """``hidden=0``: the exact penalised fit (L-BFGS), shared with every logistic model in gpuseg.

        With hold-out rows, the penalty is chosen among ``l2 x (1, 10, 100, 1000)`` by their log
        loss (``l2_``, ``history_``): an exact fit on hundreds of embedding columns overfits
        where a few epochs of Adam stopped early did not, and the hold-out says how much to shrink.
        """
        candidates = [float(self.l2) * f for f in (1.0, 10.0, 100.0, 1000.0)] if val.size else [float(self.l2)]
        self.history_ = []
        best = None
        for l2 in candidates:
            coef, intercept = fit_logistic(xt.cpu().numpy(), yt.cpu().numpy(), l2=l2, device=device)
            record = {"l2": l2}
            if val.size:
                logits = xv.double().cpu().numpy() @ coef + intercept
                y_val = yv.double().cpu().numpy()
                record["val_loss"] = float(np.mean(np.logaddexp(0.0, logits) - y_val * logits))
            self.history_.append(record)
            if best is None or record.get("val_loss", 0.0) < best[0].get("val_loss", 0.0):
                best = (record, coef, intercept)
        record, coef, intercept = best
        with torch.no_grad():
            net.out.weight.copy_(torch.as_tensor(coef, dtype=torch.float32).reshape(1, -1))
            net.out.bias.fill_(intercept)
        self.l2_ = record["l2"]
        self.best_epoch_ = 0
        self._net = net.eval()
        self.validation_ = None
        if val.size:
            self.validation_ = binary_metrics(ya[val], self.churn_probability(Xa[val]))
            log.info("churn model: logistic, l2 %.3g chosen on the hold-out, validation ROC AUC %.4f",
                     self.l2_, self.validation_["roc_auc"])
        return self

    def _fitted(self) -> _Net:
        check_fitted(_NAME, hasattr(self, "_net"))
        return self._net

    def churn_probability(self, X: Any, *, batch_size: int = 65_536) -> np.ndarray:
        """Probability of the second class (churned) per row, shape ``(n_samples,)``.

        The input is checked once (shape, feature names) and converted to float64 and checked for
        NaN a batch at a time, so scoring a large float32 matrix never holds a float64 copy of it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        batch_size : int, default=65536
            Rows converted and scored at a time.

        Returns
        -------
        ndarray of float64, shape (n_samples,)
        """
        net = self._fitted()
        Xa = _check_X(self, X, reset=False)
        device = next(net.parameters()).device
        out = np.empty(Xa.shape[0], dtype=np.float64)
        with torch.no_grad():
            for start in range(0, Xa.shape[0], batch_size):
                xs = (_finite_rows(Xa, start, start + batch_size) - self.mean_) / self.scale_
                logits = net(torch.as_tensor(xs, dtype=torch.float32, device=device))
                out[start:start + batch_size] = torch.sigmoid(logits).double().cpu().numpy()
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, scikit-learn's shape ``(n_samples, 2)`` in the order of ``classes_``."""
        p = self.churn_probability(X)
        return np.column_stack([1.0 - p, p])

    def decision_function(self, X: Any) -> np.ndarray:
        """Churn log-odds per row (what scikit-learn's ``roc_auc`` scorer reads)."""
        p = np.clip(self.churn_probability(X), 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)

    def predict(self, X: Any) -> np.ndarray:
        """The more probable class of each row (``classes_[1]`` where churn is above one half)."""
        churns = self.churn_probability(X) > 0.5  # first: an unfitted model raises NotFittedError here
        return self.classes_[churns.astype(np.int64)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _persisted_params(self) -> dict[str, Any]:
        """Constructor arguments saved with the model (JSON-ready; the device is chosen at load)."""
        return {k: getattr(self, k) for k in ("hidden", "l2", "epochs", "lr", "batch_size",
                                               "holdout_fraction", "random_state")}

    def save(self, path: str | Path) -> Path:
        """Write the weights and scaler to ``path`` (safetensors) and settings to ``path.json``.

        Returns
        -------
        Path
            The safetensors file.
        """
        net = self._fitted()
        tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
        tensors["mean"] = torch.as_tensor(self.mean_, dtype=torch.float64)
        tensors["scale"] = torch.as_tensor(self.scale_, dtype=torch.float64)
        meta = {"params": self._persisted_params(), "n_features_in": self.n_features_in_,
                "classes": self.classes_.tolist(),
                "best_epoch": self.best_epoch_, "validation": self.validation_}
        return save_artifact(_files(path), tensors, meta, kind=KIND, version=FORMAT_VERSION).tensors

    @classmethod
    def load(cls, path: str | Path, *, device: Any = "auto") -> ChurnModel:
        """Read a model written by :meth:`save`."""
        art = load_artifact(_files(path), kind=KIND, version=FORMAT_VERSION, what="churn model",
                            remedy="fit and save the ChurnModel again", expected_shapes=_tensor_shapes)
        meta, tensors = art.meta, art.tensors
        model = cls(**meta["params"], device=device)
        model.n_features_in_ = int(meta["n_features_in"])
        model.classes_ = np.array(meta.get("classes", [0, 1]))
        model.mean_ = tensors["mean"].numpy()
        model.scale_ = tensors["scale"].numpy()
        model.best_epoch_ = int(meta["best_epoch"])
        model.validation_ = meta["validation"]
        net = _Net(model.n_features_in_, int(model.hidden))
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        model._net = net.to(resolve_device(device, key="device")).eval()
        return model


def _files(path: str | Path) -> ArtifactFiles:
    """A model's two files: the safetensors file ``path`` and ``<path>.json`` beside it."""
    path = Path(path)
    return ArtifactFiles(path, path.with_name(path.name + ".json"))


def _tensor_shapes(meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors a saved model holds, and their shapes, from its metadata."""
    d, h = int(meta["n_features_in"]), int(meta["params"]["hidden"])
    shapes = {"mean": (d,), "scale": (d,), "net.out.weight": (1, h or d), "net.out.bias": (1,)}
    if h:
        shapes |= {"net.hidden.weight": (h, d), "net.hidden.bias": (h,)}
    return shapes
