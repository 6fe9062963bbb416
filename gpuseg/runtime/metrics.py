"""Metrics every layer shares: ROC AUC and the adjusted Rand index, each written once.

The k-means evidence, the journey baselines, the churn model and the evaluation against planted
personas all score with these, so a figure means the same thing wherever it is reported. The
definitions follow scikit-learn's (tests compare them): ties count one half in the AUC, and the
ARI is 1 for identical partitions and about 0 for chance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuseg.runtime.errors import UserInputError


def check_binary_labels(y: Any, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D int64 array of 0/1 labels, or a UserInputError naming ``name``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise UserInputError(f"The '{name}' parameter must be 1-dimensional. Got shape {arr.shape}.")
    try:
        vals = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise UserInputError(f"The '{name}' parameter must hold 0/1 labels.") from None
    bad = ~np.isin(vals, (0.0, 1.0))
    if bad.any():
        idx = np.flatnonzero(bad)[:5]
        raise UserInputError(f"The '{name}' parameter must hold 0/1 labels. Got {arr[idx].tolist()} "
                             f"at index {idx.tolist()}.")
    return vals.astype(np.int64)


def check_scores(p: Any, n: int, name: str = "p") -> np.ndarray:
    """``p`` as a finite float64 array of shape ``(n,)``, or a UserInputError naming ``name``."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape != (n,):
        raise UserInputError(f"The '{name}' parameter must have shape ({n},) like y. Got {arr.shape}.")
    if not np.isfinite(arr).all():
        raise UserInputError(f"The '{name}' parameter must be finite.")
    return arr


def roc_auc(y: Any, p: Any) -> float:
    """Area under the ROC curve: P(score of a random positive > that of a random negative).

    Ties count one half (the Mann-Whitney U statistic from average ranks).

    Parameters
    ----------
    y : array-like of shape (n,)
        0/1 labels.
    p : array-like of shape (n,)
        Scores.

    Returns
    -------
    float
        NaN when ``y`` holds a single class.
    """
    yy = check_binary_labels(y)
    pp = check_scores(p, yy.size)
    n_pos = int(yy.sum())
    n_neg = yy.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inv, counts = np.unique(pp, return_inverse=True, return_counts=True)
    # average rank of each distinct score (1-based): ranks before it + (count + 1) / 2
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = avg_rank[inv][yy == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _codes(labels: Any) -> torch.Tensor:
    """Any labeling (ints, strings, tensors) as dense codes 0..m-1."""
    if isinstance(labels, torch.Tensor):
        return torch.unique(labels.reshape(-1), return_inverse=True)[1]
    _, codes = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)
    return torch.as_tensor(codes)


def contingency(a: Any, b: Any) -> torch.Tensor:
    """Contingency table of two labelings (rows: values of ``a``, columns: values of ``b``)."""
    a, b = _codes(a), _codes(b)
    if a.shape != b.shape:
        raise UserInputError(f"the two labelings differ in length: {a.numel()} and {b.numel()}")
    if a.numel() == 0:
        return torch.zeros((0, 0), dtype=torch.float64)
    b = b.to(a.device)
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    return torch.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).double()


def adjusted_rand_index(a: Any, b: Any) -> float:
    """Adjusted Rand index between two labelings (numpy, torch or lists of any label type)."""
    table = contingency(a, b)
    n = table.sum()

    def comb2(x: torch.Tensor) -> torch.Tensor:
        return (x * (x - 1) / 2).sum()

    sum_cells = comb2(table)
    sum_rows, sum_cols = comb2(table.sum(1)), comb2(table.sum(0))
    expected = sum_rows * sum_cols / (n * (n - 1) / 2) if n > 1 else sum_cells
    maximum = (sum_rows + sum_cols) / 2
    if float(maximum - expected) == 0.0:
        return 1.0
    return float((sum_cells - expected) / (maximum - expected))
