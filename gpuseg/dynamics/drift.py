"""Population stability of features between the training snapshot and a later one.

PSI (population stability index) of one feature: bin it on the training quantiles, then
``sum((p_new - p_train) * ln(p_new / p_train))`` over the bins. Common reading: below 0.1 stable,
0.1-0.25 a moderate shift, above 0.25 a large one. Missing values get a bin of their own, so a
feature that starts being undefined for many customers drifts too.
"""

from __future__ import annotations

import numpy as np

#: share given to an empty bin, so that the logarithm stays finite
EPS = 1e-4


def quantile_edges(train: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the training quantiles (ties merged; empty for a constant feature).

    Parameters
    ----------
    train : ndarray of shape (n,)
        The feature at training (NaN left out).
    bins : int
        Number of quantile bins wanted.
    """
    x = np.asarray(train, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0 or bins < 2:
        return np.zeros(0)
    return np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))


def _shares(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``x`` in each bin (values above an edge go right) plus a last bin for NaN."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    counts = np.bincount(np.searchsorted(edges, x[finite], side="right"), minlength=len(edges) + 1)
    counts = np.append(counts, int((~finite).sum())).astype(np.float64)
    return counts / max(1.0, counts.sum())


def psi(train: np.ndarray, new: np.ndarray, edges: np.ndarray | None = None, bins: int = 10) -> float:
    """Population stability index of ``new`` against ``train`` (bins on the training quantiles)."""
    edges = quantile_edges(train, bins) if edges is None else np.asarray(edges, dtype=np.float64)
    p, q = _shares(train, edges), _shares(new, edges)
    used = (p > 0) | (q > 0)
    p, q = np.maximum(p[used], EPS), np.maximum(q[used], EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_table(train: np.ndarray, new: np.ndarray, names: list[str], bins: int = 10) -> dict[str, float]:
    """PSI of every column of ``new`` against the same column of ``train``, by name."""
    train, new = np.asarray(train), np.asarray(new)
    if train.shape[1] != new.shape[1] or train.shape[1] != len(names):
        raise ValueError(f"train ({train.shape[1]}) and new ({new.shape[1]}) must have the {len(names)} columns named")
    return {name: round(psi(train[:, j], new[:, j], bins=bins), 6) for j, name in enumerate(names)}
