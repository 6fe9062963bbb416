"""Choosing k with evidence: internal indices, the inertia knee, bootstrap stability and business separation.

For every candidate k the data are clustered once; silhouette (sampled), Calinski-Harabasz,
Davies-Bouldin and inertia are computed on the device, and bootstrap stability is the mean ARI
between every pair of fits (the full fit and fits on resamples), compared on a common evaluation
subset. When per-customer business figures are given (a churn label, a value), each k also
records them per segment and their spread across segments: how differently a marketer would
treat the segments. The decision rule is explicit and recorded with every figure and the reason
the chosen k won.

The default rule, ``prefer``, reads the evidence inside a preferred range of k (5 to 8 by
default: practitioners' guides recommend 5 to 7 actionable segments): a k qualifies when its
smallest segment is large enough to act on and its bootstrap stability reaches a floor (the data
support it), and among the qualifying k in the range the best mean rank over the evidence and
the business separation wins. Internal indices alone (the ``vote`` rule) favour the smallest k
on weakly clustered customer data, where silhouette is about 0.1 at every k.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import torch

from gpuseg.cluster.metrics import (
    adjusted_rand_index,
    calinski_harabasz,
    davies_bouldin,
    silhouette,
)
from gpuseg.profile.lifts import segment_means
from gpuseg.runtime.validation import InputDataError, check_options, check_param, check_real

RULES = ("prefer", "vote", "silhouette", "calinski_harabasz", "davies_bouldin", "stability", "knee")
#: evidence metric -> True when higher is better; the vote ranks k on each and averages the ranks
_DIRECTION = {"silhouette": True, "calinski_harabasz": True, "davies_bouldin": False, "stability": True}
#: what each criterion is, for the rule text, the reasons and the chart
LABELS = {"silhouette": "silhouette", "calinski_harabasz": "Calinski-Harabasz",
          "davies_bouldin": "Davies-Bouldin", "stability": "bootstrap stability", "inertia": "inertia",
          "min_share": "smallest segment share"}

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


def business_separation(values: np.ndarray, labels: np.ndarray, k: int) -> dict[str, Any]:
    """How much a per-customer figure differs across segments.

    Parameters
    ----------
    values : ndarray of float, shape (n,)
        The figure per customer (a 0/1 churn label, a value); NaN where unknown.
    labels : ndarray of int, shape (n,)
        Segment of each customer, in ``[0, k)``.
    k : int
        Number of segments.

    Returns
    -------
    dict
        ``by_segment`` (the mean per segment, NaN for a segment without a known value),
        ``overall`` (the mean of all known values), ``spread`` (the size-weighted standard
        deviation of the segment means around it: the between-segment spread, in the figure's
        units), ``range`` (highest minus lowest segment mean) and ``eta`` (spread over the
        customers' standard deviation: the share of the figure's spread the segments explain,
        as a correlation ratio in [0, 1]).
    """
    v = np.asarray(values, dtype=np.float64)
    known = np.isfinite(v)
    means = segment_means(v, labels, k)
    counts = np.bincount(np.asarray(labels)[known], minlength=k).astype(np.float64)
    overall = float(v[known].mean()) if known.any() else float("nan")
    has = counts > 0
    spread = float(np.sqrt((counts[has] * (means[has] - overall) ** 2).sum() / counts[has].sum())) \
        if has.any() else float("nan")
    sd = float(v[known].std()) if known.any() else float("nan")
    return {"by_segment": means.tolist(), "overall": overall, "spread": spread,
            "range": float(means[has].max() - means[has].min()) if has.any() else float("nan"),
            "eta": spread / sd if sd > 0 else float("nan")}


def select_k(x: torch.Tensor, ks: Sequence[int], fit: FitFn, *, seed: int = 0, min_share: float = 0.02,
             silhouette_sample: int = 4000, n_bootstrap: int = 3, bootstrap_fraction: float = 0.8,
             eval_size: int = 20000, rule: str = "prefer", prefer: Sequence[int] = (5, 8),
             min_stability: float = 0.6, stability_tolerance: float = 0.2,
             business: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
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
        subset on which the fits are compared.
    rule : {"prefer", "vote", "silhouette", "calinski_harabasz", "davies_bouldin", "stability", "knee"}
        ``prefer``: among the k in the ``prefer`` range whose smallest segment reaches
        ``min_share`` and whose stability reaches ``min_stability``, the best mean rank over
        silhouette, Calinski-Harabasz, Davies-Bouldin, stability and the spread across segments
        of each ``business`` figure; when no k in the range qualifies, the qualifying k outside
        it compete; when none qualifies, the stability floor is dropped, then the share floor.
        ``vote`` averages each k's rank on the four indices over all k with large enough
        segments; the others use one criterion. Ties go to the smaller k.
    prefer : (int, int)
        The preferred range of k, inclusive (``prefer`` rule).
    min_stability, stability_tolerance : float
        Stability floor of the ``prefer`` rule (stability: mean ARI between bootstrap fits): a k
        qualifies when its stability reaches ``min_stability`` and lies within
        ``stability_tolerance`` of the stablest k with large enough segments. The data support
        a k whose partition reproduces about as well as the most reproducible one; on clearly
        clustered data (3 tight blobs: stability 1.0 at k=3, 0.6 at k=5) that sets the k in the
        range aside and the planted k wins from outside it.
    business : dict of str to ndarray, optional
        Per-customer figures aligned with the rows of ``x`` (NaN where unknown), e.g.
        ``{"churn": label, "value": spend}``: recorded per segment for every k (see
        :func:`business_separation`) and, in the ``prefer`` rule, ranked on their ``spread``.

    Returns
    -------
    dict
        ``{"k": chosen, "rule": ..., "rule_text": ..., "reason": ..., "candidates": [per-k
        figures], "knee_k": ..., ...}``.
    """
    check_options("select_k", "rule", rule, RULES, config_key="segment.selection.rule")
    ks = sorted({int(k) for k in ks})
    check_param("select_k", "ks", ks, bool(ks) and ks[0] >= 2, "a list of ints in the range [2, inf)",
                config_key="segment.k_min")
    prefer = [int(p) for p in prefer]
    check_param("select_k", "prefer", prefer, len(prefer) == 2 and 2 <= prefer[0] <= prefer[1],
                "two ints [low, high] with 2 <= low <= high", config_key="segment.selection.prefer")
    check_real("select_k", "min_stability", min_stability, low=-1.0, high=1.0,
               config_key="segment.selection.min_stability")
    check_real("select_k", "stability_tolerance", stability_tolerance, low=0.0,
               config_key="segment.selection.stability_tolerance")
    n = x.shape[0]
    if ks[-1] >= n:
        raise InputDataError(f"{n} customers cannot be split into {ks[-1]} segments: every candidate k must be "
                             "below the number of customers; lower segment.k_max (or segment.n_clusters)",
                             config_key="segment.k_max")
    business = {name: np.asarray(v, dtype=np.float64) for name, v in (business or {}).items()}
    for name, v in business.items():
        check_param("select_k", "business", name, v.shape == (n,), f"one value per row of x ({n})")
    gen = torch.Generator().manual_seed(seed)
    eval_idx = torch.randperm(n, generator=gen)[:min(eval_size, n)].to(x.device)
    candidates = [_evidence(x, k, fit, seed, eval_idx, silhouette_sample, n_bootstrap, bootstrap_fraction,
                            business) for k in ks]
    for c in candidates:
        c["eligible"] = c["min_share"] >= min_share
    stable = [c["stability"] for c in candidates if c["eligible"] and np.isfinite(c["stability"])]
    floor = max(min_stability, max(stable) - stability_tolerance) if stable else min_stability
    for c in candidates:
        c["meets_min_stability"] = bool(c["stability"] >= floor)
        c["in_prefer"] = prefer[0] <= c["k"] <= prefer[1]
    knee = knee_point(ks, [c["inertia"] for c in candidates])
    criteria = list(_DIRECTION)
    if rule == "prefer":
        criteria += [f"{name}_spread" for name in business]
        pool, step = _prefer_pool(candidates)
    else:
        pool = [c for c in candidates if c["eligible"]] or candidates
        step = "segments large enough" if any(c["eligible"] for c in candidates) else "every k (none large enough)"
    chosen = _decide(pool, rule, knee, criteria)
    for c in candidates:
        c["in_pool"] = any(c is p for p in pool)
    return {
        "k": chosen,
        "rule": rule,
        "rule_text": _rule_text(rule, min_share, prefer, min_stability, stability_tolerance, list(business)),
        "reason": _reason(chosen, pool, rule, step, criteria, knee),
        "pool": step,
        "criteria": {c: ("higher" if _higher(c) else "lower") + " is better" for c in criteria},
        "knee_k": knee,
        "min_share": min_share,
        "prefer": prefer,
        "min_stability": min_stability,
        "stability_tolerance": stability_tolerance,
        "stability_floor": floor,
        "business": sorted(business) or None,
        "no_k_met_min_share": not any(c["eligible"] for c in candidates),
        "candidates": candidates,
    }


def _evidence(x: torch.Tensor, k: int, fit: FitFn, seed: int, eval_idx: torch.Tensor, silhouette_sample: int,
              n_bootstrap: int, bootstrap_fraction: float, business: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every figure of one candidate k."""
    n = x.shape[0]
    centers = fit(k, x, seed)
    labels, d2 = nearest_centers(x, centers)
    shares = torch.bincount(labels, minlength=k).double() / n
    row: dict[str, Any] = {
        "k": k,
        "inertia": float(d2.double().sum()),
        "min_share": float(shares.min()),
        "shares": shares.tolist(),
        "silhouette": silhouette(x, labels, sample_size=silhouette_sample,
                                 generator=torch.Generator().manual_seed(seed + k)),
        "calinski_harabasz": calinski_harabasz(x, labels),
        "davies_bouldin": davies_bouldin(x, labels),
    }
    fits = [labels[eval_idx]]
    for b in range(n_bootstrap):
        g = torch.Generator().manual_seed(seed * 1000 + k * 10 + b + 1)
        sub = torch.randperm(n, generator=g)[:max(k + 1, int(bootstrap_fraction * n))].to(x.device)
        centers_b = fit(k, x[sub], seed + b + 1)
        fits.append(nearest_centers(x[eval_idx], centers_b)[0])
    # every pair of fits, not only full-vs-resample: twice the comparisons for the same fits, so a
    # single unlucky full fit weighs less
    row["stability_runs"] = [adjusted_rand_index(fits[0], f) for f in fits[1:]]
    pairs = [adjusted_rand_index(a, b) for a, b in combinations(fits, 2)]
    row["stability"] = float(np.mean(pairs)) if pairs else float("nan")
    if business:
        lab = labels.cpu().numpy()
        row["business"] = {name: business_separation(v, lab, k) for name, v in business.items()}
        for name, sep in row["business"].items():
            row[f"{name}_spread"] = sep["spread"]
    return row


def _prefer_pool(candidates: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The k that compete under the ``prefer`` rule, and which step of the fallback found them."""
    steps = (
        ("in the preferred range, large enough segments and stable",
         lambda c: c["in_prefer"] and c["eligible"] and c["meets_min_stability"]),
        ("outside the preferred range (no k in it met both floors), large enough segments and stable",
         lambda c: c["eligible"] and c["meets_min_stability"]),
        ("in the preferred range, large enough segments; no k reached the stability floor: the data support "
         "no reproducible split here, treat the segments as a convenient partition",
         lambda c: c["in_prefer"] and c["eligible"]),
        ("large enough segments; none in the preferred range and none stable", lambda c: c["eligible"]),
    )
    for text, keep in steps:
        pool = [c for c in candidates if keep(c)]
        if pool:
            return pool, text
    return candidates, "every k: none met the floors"


def _higher(criterion: str) -> bool:
    return _DIRECTION.get(criterion, True)  # business spreads: higher is better


def _decide(pool: list[dict[str, Any]], rule: str, knee: int, criteria: list[str]) -> int:
    if rule == "knee":
        eligible = [c["k"] for c in pool]
        return min(eligible, key=lambda k: (abs(k - knee), k))
    metrics = criteria if rule in ("vote", "prefer") else [rule]
    ranks = np.zeros(len(pool))
    for metric in metrics:
        values = np.array([c[metric] for c in pool], dtype=float)
        values = np.where(np.isfinite(values), values, -np.inf if _higher(metric) else np.inf)
        order = np.argsort(-values if _higher(metric) else values, kind="stable")
        r = np.empty(len(pool))
        r[order] = np.arange(len(pool))
        ranks += r
        for c, ri in zip(pool, r, strict=True):
            c.setdefault("ranks", {})[metric] = int(ri)
    for c, r in zip(pool, ranks, strict=True):
        c["mean_rank"] = float(r / len(metrics))
    best = min(range(len(pool)), key=lambda i: (ranks[i], pool[i]["k"]))
    return int(pool[best]["k"])


def _reason(chosen: int, pool: list[dict[str, Any]], rule: str, step: str, criteria: list[str], knee: int) -> str:
    """Why ``chosen`` won, in words: which k competed and how it ranked against the runner-up."""
    ks = ", ".join(str(c["k"]) for c in pool)
    if rule == "knee":
        return f"k={chosen} is the candidate nearest the inertia knee (k={knee}) among k {ks} ({step})"
    if len(pool) == 1:
        return f"k={chosen} was the only candidate {step}"
    win = next(c for c in pool if c["k"] == chosen)
    others = sorted((c for c in pool if c["k"] != chosen), key=lambda c: (c["mean_rank"], c["k"]))
    first = [LABELS.get(m, m.replace("_", " ")) for m in win.get("ranks", {}) if win["ranks"][m] == 0]
    text = (f"k={chosen} won among k {ks} ({step}): mean rank {win['mean_rank']:.2f} "
            f"(0 = best on every criterion) against {others[0]['mean_rank']:.2f} for k={others[0]['k']}")
    return text + (f"; best on {', '.join(first)}" if first else "")


def _rule_text(rule: str, min_share: float, prefer: list[int], min_stability: float, tolerance: float,
               business: list[str]) -> str:
    base = f"k whose smallest segment holds less than {min_share:.1%} of customers are set aside; "
    if rule == "prefer":
        sep = (" and the spread across segments (size-weighted standard deviation of the segment means) of "
               + " and ".join(business) + " (higher)") if business else \
            ("; business separation was not available (no customer label, no value column), so the evidence "
             "alone decides")
        return (base + f"so are k whose bootstrap stability (mean ARI between refits on resamples) is below "
                f"{min_stability:.2f} or more than {tolerance:.2f} below the stablest such k. Among the rest within the preferred range {prefer[0]}-{prefer[1]}, the k with "
                "the best mean rank over silhouette (higher), Calinski-Harabasz (higher), Davies-Bouldin (lower), "
                f"bootstrap stability (higher){sep} is chosen; ties go to the smaller k. When no k in the range "
                "qualifies, qualifying k outside it compete the same way; when none qualifies anywhere, the "
                "stability floor is dropped (range first), then the share floor")
    if rule == "vote":
        return base + ("among the rest, the k with the best mean rank over silhouette (higher), "
                       "Calinski-Harabasz (higher), Davies-Bouldin (lower) and bootstrap stability "
                       "(higher) is chosen; ties go to the smaller k")
    if rule == "knee":
        return base + "among the rest, the k nearest the knee of the inertia curve is chosen"
    return base + f"among the rest, the k with the best {rule} is chosen"
