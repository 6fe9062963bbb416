"""Principal axes, in one place: from a covariance (streamed on the device) or a centred sample.

Both routes give the axes as rows, in decreasing order of variance, with one sign convention (the
largest-magnitude loading of every axis is positive, so the same data always gives the same
axes), and the variance each axis explains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PrincipalAxes:
    """Principal axes of a matrix (torch tensors on the device they were computed on)."""

    components: torch.Tensor
    """(n_components, n_features): one axis per row, decreasing variance, signs fixed."""
    explained_variance: torch.Tensor
    """(n_components,): variance along each axis (unbiased, ``n - 1`` denominator)."""
    explained_variance_ratio: torch.Tensor
    """(n_components,): each axis's share of the total variance (zeros for constant data)."""


def fix_signs(components: torch.Tensor) -> torch.Tensor:
    """Flip each row so that its largest-magnitude loading is positive (rows of zeros kept)."""
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    return components * torch.where(signs == 0, torch.ones_like(signs), signs)


def streamed_covariance(X: np.ndarray, device: torch.device, chunk_rows: int = 65536,
                        ) -> tuple[np.ndarray, torch.Tensor]:
    """Column means and the (d, d) float64 covariance of ``X``, accumulated chunk by chunk on ``device``."""
    n, d = X.shape
    mean = X.mean(0)
    cov = torch.zeros(d, d, dtype=torch.float64, device=device)
    for s in range(0, n, chunk_rows):
        x = torch.as_tensor(X[s:s + chunk_rows] - mean, device=device)
        cov += x.T @ x
    cov /= max(n - 1, 1)
    return mean, cov


def from_covariance(cov: torch.Tensor) -> PrincipalAxes:
    """Every principal axis of a covariance matrix (its eigendecomposition)."""
    evals, evecs = torch.linalg.eigh(cov)
    variance = evals.flip(0).clamp_min(0)
    return _axes(evecs.flip(1).T, variance)


def from_centred_sample(x: torch.Tensor, n_components: int | None = None) -> PrincipalAxes:
    """The first ``n_components`` (all when None) principal axes of centred rows ``x`` (an SVD)."""
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    variance = s**2 / max(x.shape[0] - 1, 1)
    axes = _axes(vh, variance)
    if n_components is None:
        return axes
    return PrincipalAxes(axes.components[:n_components], axes.explained_variance[:n_components],
                         axes.explained_variance_ratio[:n_components])


def n_components_for(ratio: np.ndarray, fraction: float) -> int:
    """Fewest leading axes whose explained-variance ratios add up to ``fraction``."""
    return int(np.searchsorted(np.cumsum(ratio), fraction) + 1)


def _axes(components: torch.Tensor, variance: torch.Tensor) -> PrincipalAxes:
    total = variance.sum()
    ratio = variance / total if total > 0 else torch.zeros_like(variance)
    return PrincipalAxes(fix_signs(components), variance, ratio)
