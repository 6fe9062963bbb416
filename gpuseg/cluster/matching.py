"""Stable segment ids across refits: match new k-means centres to the previous ones.

A refit numbers its clusters arbitrarily. :func:`match_centers` pairs each new centre with at
most one previous centre by Hungarian assignment on their Euclidean distances
(:func:`scipy.optimize.linear_sum_assignment`), refusing pairs farther apart than a limit, and
numbers the new centres by this rule, which keeps the ids ``0..k-1`` (so a model's centre row
is its segment id, and everything that counts segments by id keeps working):

1. a matched centre keeps its previous id when that id is below the new ``k``;
2. the remaining ids of ``0..k-1`` go first to matched centres whose previous id is ``k`` or
   more (only possible after deaths; reported as ``renumbered``), by previous id,
3. then to births (unmatched new centres), in centre order, ids above the previous maximum
   first: an id whose segment died is given to a birth only when ``0..k-1`` has no other free id.

Unmatched previous centres are deaths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


@dataclass(frozen=True)
class CenterMatch:
    """The outcome of :func:`match_centers`.

    Attributes
    ----------
    ids : ndarray of int64, shape (k_new,)
        Segment id given to each new centre (a permutation of ``0..k_new-1``).
    order : ndarray of int64, shape (k_new,)
        New centre index of each id (``order[ids] == arange(k_new)``): the row order that puts
        the centres in id order.
    matched : list of (int, int, float)
        ``(id, previous_id, distance)`` of every matched pair, by id.
    births : list of int
        Ids of the new centres that match no previous one.
    deaths : list of int
        Previous ids that no new centre matches.
    renumbered : dict of int to int
        Previous id -> new id of the matched segments that could not keep their id.
    max_distance : float
        The distance limit used (``inf`` when none).
    """

    ids: np.ndarray
    order: np.ndarray
    matched: list[tuple[int, int, float]] = field(default_factory=list)
    births: list[int] = field(default_factory=list)
    deaths: list[int] = field(default_factory=list)
    renumbered: dict[int, int] = field(default_factory=dict)
    max_distance: float = float("inf")


def center_spread(centers: np.ndarray) -> float:
    """Median distance from each centre to its nearest other centre (``inf`` for one centre).

    The natural unit of a matching limit: a centre that moved by half of it is still closer to
    its old place than to the midpoint towards a neighbour.
    """
    c = np.asarray(centers, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        return float("inf")
    d = cdist(c, c)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(axis=1)))


def match_centers(previous: np.ndarray, new: np.ndarray, max_distance: float | None = None) -> CenterMatch:
    """Give the centres of a refit the ids of the previous centres they match.

    Parameters
    ----------
    previous : array of shape (k_old, d)
        Previous centres in id order (row ``i`` is segment ``i``).
    new : array of shape (k_new, d)
        Centres of the refit, in any order.
    max_distance : float, optional
        Pairs farther apart than this are not matched (None: no limit).

    Returns
    -------
    CenterMatch

    Raises
    ------
    ValueError
        When the arrays are not 2-D, are empty or differ in dimension.
    """
    old = np.asarray(previous, dtype=np.float64)
    cur = np.asarray(new, dtype=np.float64)
    if old.ndim != 2 or cur.ndim != 2 or not len(old) or not len(cur):
        raise ValueError(f"centres must be non-empty 2-D arrays, got shapes {old.shape} and {cur.shape}")
    if old.shape[1] != cur.shape[1]:
        raise ValueError(f"previous centres have {old.shape[1]} dimensions, new ones {cur.shape[1]}")
    limit = float("inf") if max_distance is None else float(max_distance)
    if not limit >= 0:
        raise ValueError(f"max_distance must be a non-negative number or None, got {max_distance!r}")
    k_old, k_new = len(old), len(cur)
    dist = cdist(cur, old)
    # forbidden pairs cost more than any set of allowed ones, so the solver uses as few as it can
    allowed = dist <= limit
    big = float(dist[allowed].sum()) + 1.0 if allowed.any() else 1.0
    rows, cols = linear_sum_assignment(np.where(allowed, dist, big))
    keep = allowed[rows, cols]
    pairs = {int(j): int(i) for j, i in zip(rows[keep], cols[keep], strict=True)}

    ids = np.full(k_new, -1, dtype=np.int64)
    for j, i in pairs.items():
        if i < k_new:
            ids[j] = i
    free = sorted(set(range(k_new)) - set(ids[ids >= 0].tolist()))
    renumbered: dict[int, int] = {}
    for j, i in sorted(pairs.items(), key=lambda p: p[1]):
        if i >= k_new:
            ids[j] = free.pop(0)  # after deaths only the lowest free ids are left, all below k_old
            renumbered[i] = int(ids[j])
    free.sort(key=lambda i: (i < k_old, i))  # births: above the previous maximum first
    births = []
    for j in range(k_new):
        if ids[j] < 0:
            ids[j] = free.pop(0)
            births.append(int(ids[j]))
    order = np.argsort(ids)
    matched = sorted((int(ids[j]), i, float(dist[j, i])) for j, i in pairs.items())
    deaths = sorted(set(range(k_old)) - set(pairs.values()))
    return CenterMatch(ids=ids, order=order, matched=matched, births=sorted(births), deaths=deaths,
                       renumbered=renumbered, max_distance=limit)


def reorder_clusters(model, order: np.ndarray):
    """Put a fitted :class:`~gpuseg.cluster.MiniBatchKMeans`'s clusters in ``order``, in place.

    Cluster ``i`` of the result is cluster ``order[i]`` of the fit: centres, per-centre counts
    (saved with the model) and ``labels_`` follow, so ``predict`` returns the new ids.

    Returns
    -------
    The same model.
    """
    order = np.asarray(order, dtype=np.int64)
    k = len(model.cluster_centers_)
    if sorted(order.tolist()) != list(range(k)):
        raise ValueError(f"order must be a permutation of 0..{k - 1}, got {order.tolist()}")
    model.cluster_centers_ = np.ascontiguousarray(model.cluster_centers_[order])
    state = getattr(model, "_state", None)
    if state is not None:
        idx = torch.as_tensor(order, device=state.centers.device)
        state.centers = state.centers[idx].contiguous()
        state.counts = state.counts[idx]
    labels = getattr(model, "labels_", None)
    if labels is not None and len(labels):
        new_id = np.empty(k, dtype=np.int64)
        new_id[order] = np.arange(k)
        model.labels_ = new_id[labels].astype(labels.dtype)
    return model
