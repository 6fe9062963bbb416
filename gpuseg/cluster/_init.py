"""Centre initialisation on a sample, vectorised on the compute device.

Greedy k-means++ as in scikit-learn (``sklearn/cluster/_kmeans.py::_kmeans_plusplus``): each new
centre is the best of ``2 + ln(k)`` candidates drawn with probability proportional to the
squared distance to the nearest centre so far, "best" meaning the lowest resulting potential.
All candidates of one round are scored with one GEMM, and nothing leaves the device inside the
loop (no ``.item()``), so a CUDA run queues ``k`` rounds without host synchronisation.
"""

from __future__ import annotations

import math

import torch

from gpuseg.cluster._assign import row_sqnorm


def kmeans_plusplus(
    x: torch.Tensor,
    n_clusters: int,
    generator: torch.Generator,
    *,
    n_local_trials: int | None = None,
) -> torch.Tensor:
    """Greedy k-means++ seeding.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` float32 sample, ``n >= n_clusters``.
    n_clusters : int
        Number of centres.
    generator : torch.Generator
        Random stream on ``x``'s device.
    n_local_trials : int, optional
        Candidates per round; default ``2 + int(ln(n_clusters))`` (scikit-learn's choice).

    Returns
    -------
    torch.Tensor
        ``(n_clusters, d)`` float32 centres, rows of ``x``.
    """
    n, d = x.shape
    device = x.device
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    x_sq = row_sqnorm(x)
    centers = torch.empty(n_clusters, d, dtype=x.dtype, device=device)

    first = torch.randint(n, (1,), generator=generator, device=device)
    centers[0:1] = x.index_select(0, first)
    closest = _sqdist_to(x, x_sq, centers[0:1])[0]
    for c in range(1, n_clusters):
        # sample candidates by inverse CDF; float64 keeps the CDF monotone for large samples
        cdf = torch.cumsum(closest, 0, dtype=torch.float64)
        u = torch.rand(n_local_trials, generator=generator, device=device, dtype=torch.float64)
        cand = torch.searchsorted(cdf, u * cdf[-1]).clamp_(max=n - 1)
        dist = torch.minimum(closest[None, :], _sqdist_to(x, x_sq, x.index_select(0, cand)))
        potential = dist.sum(1, dtype=torch.float64)
        # index with 1-element tensors: a 0-d tensor index would call .item() and sync the GPU
        best = torch.argmin(potential).view(1)
        closest = dist.index_select(0, best)[0]
        centers[c : c + 1] = x.index_select(0, cand.index_select(0, best))
    return centers


def random_rows(x: torch.Tensor, n_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """``n_clusters`` distinct rows of ``x`` chosen uniformly (``init="random"``)."""
    idx = torch.randperm(x.shape[0], generator=generator, device=x.device)[:n_clusters]
    return x.index_select(0, idx)


def _sqdist_to(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(m, n)`` squared distances from the ``m`` rows of ``c`` to every row of ``x``."""
    g = torch.addmm((c * c).sum(1)[:, None] + x_sq[None, :], c, x.t(), beta=1.0, alpha=-2.0)
    return g.clamp_min_(0.0)
