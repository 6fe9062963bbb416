"""Clustering quality metrics computed with torch on the data's device.

Each takes data and integer labels as tensors and returns a Python float; the scores follow
scikit-learn's definitions (tests compare them) but run chunked on CPU or CUDA. The adjusted Rand
index lives in :mod:`gpuseg.runtime.metrics` (every layer scores with it).
"""

from __future__ import annotations

import torch

from gpuseg.runtime.metrics import adjusted_rand_index, contingency  # noqa: F401  (re-exported)
from gpuseg.runtime.validation import InputDataError


def _as_labels(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() and labels.min() < 0:
        raise InputDataError("labels must be non-negative integers")
    return labels


#: rows per step of the full-data metrics: their float64 temporaries stay a few hundred MB
#: whatever the number of customers (a whole 1M x 400 matrix in float64 is 3.2 GB, per copy)
_CHUNK_ROWS = 65536


def _chunks(n: int, chunk_rows: int = _CHUNK_ROWS):
    for lo in range(0, n, chunk_rows):
        yield slice(lo, min(n, lo + chunk_rows))


def cluster_means(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster means and counts (float64 accumulation, in row chunks)."""
    labels = _as_labels(labels).to(x.device)
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    for rows in _chunks(x.shape[0]):
        sums.index_add_(0, labels[rows], x[rows].double())
    counts = torch.bincount(labels, minlength=k).double()
    return sums / counts.clamp_min(1).unsqueeze(1), counts


def calinski_harabasz(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Calinski-Harabasz index: between- over within-cluster dispersion (higher is better)."""
    labels = _as_labels(labels).to(x.device)
    k = int(labels.max()) + 1
    means, counts = cluster_means(x, labels, k)
    present = counts > 0
    n_clusters = int(present.sum())
    n = x.shape[0]
    if n_clusters < 2 or n_clusters >= n:
        raise InputDataError(f"calinski_harabasz needs 2 <= n_clusters < n_samples, got {n_clusters} and {n}")
    overall = (means * counts.unsqueeze(1)).sum(0) / n
    between = (counts[present] * ((means[present] - overall) ** 2).sum(1)).sum()
    within = sum(((x[rows].double() - means[labels[rows]]) ** 2).sum() for rows in _chunks(n))
    if float(within) == 0.0:
        return 1.0
    return float(between * (n - n_clusters) / (within * (n_clusters - 1)))


def davies_bouldin(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Davies-Bouldin index: mean worst-case ratio of scatter to separation (lower is better)."""
    labels = _as_labels(labels).to(x.device)
    k = int(labels.max()) + 1
    means, counts = cluster_means(x, labels, k)
    present = counts > 0
    scatter = torch.zeros(k, dtype=torch.float64, device=x.device)
    for rows in _chunks(x.shape[0]):
        lab = labels[rows]
        scatter.index_add_(0, lab, torch.linalg.vector_norm(x[rows].double() - means[lab], dim=1))
    scatter = scatter / counts.clamp_min(1)
    means, scatter = means[present], scatter[present]
    if means.shape[0] < 2:
        raise InputDataError("davies_bouldin needs at least 2 clusters")
    separation = torch.cdist(means, means)
    ratio = (scatter[:, None] + scatter[None, :]) / separation
    ratio.fill_diagonal_(float("-inf"))
    ratio = torch.nan_to_num(ratio, nan=0.0, posinf=0.0)
    return float(ratio.max(1).values.mean())


def silhouette(x: torch.Tensor, labels: torch.Tensor, *, sample_size: int | None = 4000,
               generator: torch.Generator | None = None, chunk_size: int = 2048) -> float:
    """Mean silhouette coefficient, on a random sample of ``sample_size`` points (all if None).

    Distances are Euclidean, as in scikit-learn's ``silhouette_score``; a point alone in its
    cluster scores 0.
    """
    labels = _as_labels(labels).to(x.device)
    n = x.shape[0]
    if sample_size is not None and sample_size < n:
        idx = torch.randperm(n, generator=generator)[:sample_size].to(x.device)
        x, labels = x[idx], labels[idx]
    _, labels = torch.unique(labels, return_inverse=True)
    k = int(labels.max()) + 1
    if k < 2 or k >= x.shape[0]:
        raise InputDataError(f"silhouette needs 2 <= n_clusters < n_samples, got {k} and {x.shape[0]}")
    x = x.double()
    onehot = torch.zeros(x.shape[0], k, dtype=torch.float64, device=x.device)
    onehot[torch.arange(x.shape[0], device=x.device), labels] = 1.0
    counts = onehot.sum(0)
    scores = []
    for start in range(0, x.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        dist_sums = torch.cdist(x[rows], x) @ onehot  # (chunk, k): summed distance to each cluster
        own = labels[rows]
        own_count = counts[own]
        a = dist_sums.gather(1, own[:, None]).squeeze(1) / (own_count - 1).clamp_min(1)
        mean_other = dist_sums / counts
        mean_other.scatter_(1, own[:, None], float("inf"))
        b = mean_other.min(1).values
        s = (b - a) / torch.maximum(a, b)
        s = torch.where(own_count > 1, torch.nan_to_num(s, nan=0.0), torch.zeros_like(s))
        scores.append(s)
    return float(torch.cat(scores).mean())
