"""Choosing k with evidence: internal indices, the inertia knee and bootstrap stability.

For every candidate k the data are clustered once; silhouette (sampled), Calinski-Harabasz,
Davies-Bouldin and inertia are computed on the device, and bootstrap stability is the mean ARI
between the full fit and fits on resamples, compared on a common evaluation subset. A minimum
segment share removes k that leave segments too small to act on. The decision rule is explicit
and recorded with every metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gpuseg.cluster.metrics import (
    adjusted_rand_index,
    calinski_harabasz,
    davies_bouldin,
    silhouette,
)
from gpuseg.runtime.validation import InputDataError, check_options, check_param

RULES = ("vote", "silhouette", "calinski_harabasz", "davies_bouldin", "stability", "knee")
#: metric -> True when higher is better; the vote ranks k on each and averages the ranks
_DIRECTION = {"silhouette": True, "calinski_harabasz": True, "davies_bouldin": False, "stability": True}

#: fit(k, data, seed) -> centres tensor (k, d)
FitFn = Callable[[int, torch.Tensor, int], torch.Tensor]


def nearest_centers(x: torch.Tensor, centers: torch.Tensor, chunk_size: int = 65536
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centre, chunked (no N x K matrix kept)."""
    centers = centers.to(x.device, x.dtype)
    c_sq = (centers * centers).sum(1)
    labels, dists = [], []
    for start in range(0, x.shape[0], chunk_size):
        xc = x[start:start + chunk_size]
        d = (xc * xc).sum(1, keepdim=True) - 2 * xc @ centers.T + c_sq
        m = d.min(1)
        labels.append(m.indices)
        dists.append(m.values.clamp_min(0))
    return torch.cat(labels), torch.cat(dists)


def knee_point(ks: Sequence[int], inertia: Sequence[float]) -> int:
    """k at the knee of the inertia curve (Kneedle: farthest point below the chord)."""
    k = np.asarray(ks, dtype=float)
    y = np.asarray(inertia, dtype=float)
    if len(k) < 3:
        return int(k[0])
    kn = (k - k.min()) / (k.max() - k.min())
    yn = (y - y.min()) / max(y.max() - y.min(), 1e-12)
    # inertia decreases and is convex: distance below the straight line from first to last point
    chord = yn[0] + (yn[-1] - yn[0]) * kn
    return int(k[int(np.argmax(chord - yn))])


def select_k(x: torch.Tensor, ks: Sequence[int], fit: FitFn, *, seed: int = 0, min_share: float = 0.02,
             silhouette_sample: int = 4000, n_bootstrap: int = 3, bootstrap_fraction: float = 0.8,
             eval_size: int = 20000, rule: str = "vote") -> dict[str, Any]:
    """Cluster ``x`` for each k in ``ks`` and choose one.

    Parameters
    ----------
    x : torch.Tensor (n, d)
        Data on the device the metrics should run on (a sample of a large dataset is fine).
    ks : sequence of int
        Candidate numbers of clusters (each >= 2).
    fit : callable
        ``fit(k, data, seed) -> centres``.
    seed : int
        Seeds the samples and the fits.
    min_share : float
        Smallest acceptable segment share; k whose smallest segment is below it are not chosen
        unless no k qualifies.
    silhouette_sample, n_bootstrap, bootstrap_fraction, eval_size
        Sizes of the silhouette sample, number and size of bootstrap resamples, and the common
        subset on which resampled fits are compared.
    rule : {"vote", "silhouette", "calinski_harabasz", "davies_bouldin", "stability", "knee"}
        ``vote`` averages each k's rank on silhouette, Calinski-Harabasz, Davies-Bouldin and
        stability; the others use one criterion. Ties go to the smaller k.

    Returns
    -------
    dict
        ``{"k": chosen, "rule": ..., "candidates": [per-k metrics], "knee_k": ..., ...}``.
    """
    check_options("select_k", "rule", rule, RULES, config_key="segment.selection.rule")
    ks = sorted({int(k) for k in ks})
    check_param("select_k", "ks", ks, bool(ks) and ks[0] >= 2, "a list of ints in the range [2, inf)",
                config_key="segment.k_min")
    n = x.shape[0]
    if ks[-1] >= n:
        raise InputDataError(f"{n} customers cannot be split into {ks[-1]} segments: every candidate k must be "
                             "below the number of customers; lower segment.k_max (or segment.n_clusters)",
                             config_key="segment.k_max")
    gen = torch.Generator().manual_seed(seed)
    eval_idx = torch.randperm(n, generator=gen)[:min(eval_size, n)].to(x.device)
    candidates = []
    for k in ks:
        centers = fit(k, x, seed)
        labels, d2 = nearest_centers(x, centers)
        shares = torch.bincount(labels, minlength=k).double() / n
        row: dict[str, Any] = {
            "k": k,
            "inertia": float(d2.double().sum()),
            "min_share": float(shares.min()),
            "silhouette": silhouette(x, labels, sample_size=silhouette_sample,
                                     generator=torch.Generator().manual_seed(seed + k)),
            "calinski_harabasz": calinski_harabasz(x, labels),
            "davies_bouldin": davies_bouldin(x, labels),
        }
        ref = labels[eval_idx]
        aris = []
        for b in range(n_bootstrap):
            g = torch.Generator().manual_seed(seed * 1000 + k * 10 + b + 1)
            sub = torch.randperm(n, generator=g)[:max(k + 1, int(bootstrap_fraction * n))].to(x.device)
            centers_b = fit(k, x[sub], seed + b + 1)
            aris.append(adjusted_rand_index(ref, nearest_centers(x[eval_idx], centers_b)[0]))
        row["stability"] = float(np.mean(aris)) if aris else float("nan")
        row["stability_runs"] = aris
        row["eligible"] = row["min_share"] >= min_share
        candidates.append(row)
    knee = knee_point(ks, [c["inertia"] for c in candidates])
    pool = [c for c in candidates if c["eligible"]] or candidates
    chosen = _decide(pool, rule, knee)
    return {
        "k": chosen,
        "rule": rule,
        "rule_text": _rule_text(rule, min_share),
        "knee_k": knee,
        "min_share": min_share,
        "no_k_met_min_share": not any(c["eligible"] for c in candidates),
        "candidates": candidates,
    }


def _decide(pool: list[dict[str, Any]], rule: str, knee: int) -> int:
    if rule == "knee":
        eligible = [c["k"] for c in pool]
        return min(eligible, key=lambda k: (abs(k - knee), k))
    metrics = list(_DIRECTION) if rule == "vote" else [rule]
    ranks = np.zeros(len(pool))
    for metric in metrics:
        values = np.array([c[metric] for c in pool], dtype=float)
        values = np.where(np.isfinite(values), values, -np.inf if _DIRECTION[metric] else np.inf)
        order = np.argsort(-values if _DIRECTION[metric] else values, kind="stable")
        r = np.empty(len(pool))
        r[order] = np.arange(len(pool))
        ranks += r
    for c, r in zip(pool, ranks, strict=True):
        c["mean_rank"] = float(r / len(metrics))
    best = min(range(len(pool)), key=lambda i: (ranks[i], pool[i]["k"]))
    return int(pool[best]["k"])


def _rule_text(rule: str, min_share: float) -> str:
    base = f"k whose smallest segment holds less than {min_share:.1%} of customers are set aside; "
    if rule == "vote":
        return base + ("among the rest, the k with the best mean rank over silhouette (higher), "
                       "Calinski-Harabasz (higher), Davies-Bouldin (lower) and bootstrap stability "
                       "(higher) is chosen; ties go to the smaller k")
    if rule == "knee":
        return base + "among the rest, the k nearest the knee of the inertia curve is chosen"
    return base + f"among the rest, the k with the best {rule} is chosen"
