"""Macro segments: Ward agglomeration of micro-segment centres weighted by their sizes.

Merging k centres (k in the hundreds or thousands) is cheap next to the data pass, and because
each micro-segment is merged whole, every micro-segment sits inside exactly one macro segment.
"""

from __future__ import annotations

import numpy as np

from gpuseg.runtime.validation import InputDataError, check_int


def ward_linkage(centers: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ward linkage of weighted points, in scipy's linkage-matrix format.

    The merge cost of clusters A and B is the increase in within-cluster sum of squares,
    ``w_A w_B / (w_A + w_B) * ||mu_A - mu_B||^2``, updated by the Lance-Williams formula. Each
    row's nearest neighbour is cached so a merge only rescans the rows it invalidated.

    Parameters
    ----------
    centers : ndarray of shape (k, d)
    weights : ndarray of shape (k,)
        Positive sizes (e.g. customers per micro-segment).

    Returns
    -------
    ndarray of shape (k - 1, 4)
        ``[a, b, height, size]`` per merge, ids >= k naming earlier merges, heights as
        sqrt(2 * cost) like scipy's Ward.
    """
    centers = np.asarray(centers, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    k = centers.shape[0]
    if weights.shape[0] != k:
        raise InputDataError(f"weights has {weights.shape[0]} entries for {k} centers")
    if np.any(weights <= 0):
        raise InputDataError("weights must be positive (drop empty micro-segments first)")
    if k < 2:
        return np.zeros((0, 4))
    sq = (centers**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * centers @ centers.T, 0.0)
    w = weights.copy()
    cost = (w[:, None] * w[None, :] / (w[:, None] + w[None, :])) * d2
    np.fill_diagonal(cost, np.inf)
    active = np.ones(k, dtype=bool)
    node = np.arange(k)  # linkage id of the cluster stored in each row
    nn = cost.argmin(1)
    nn_cost = cost[np.arange(k), nn]
    out = np.zeros((k - 1, 4))
    for step in range(k - 1):
        i = int(np.argmin(np.where(active, nn_cost, np.inf)))
        j = int(nn[i])
        merged_cost = cost[i, j]
        wi, wj = w[i], w[j]
        # Lance-Williams update for Ward: new cost from (i + j) to every other cluster l
        wl = w
        new = ((wi + wl) * cost[i] + (wj + wl) * cost[j] - wl * merged_cost) / (wi + wj + wl)
        new[~active] = np.inf
        new[i] = new[j] = np.inf
        cost[i, :] = new
        cost[:, i] = new
        cost[j, :] = np.inf
        cost[:, j] = np.inf
        active[j] = False
        w[i] = wi + wj
        out[step] = (min(node[i], node[j]), max(node[i], node[j]), np.sqrt(2 * merged_cost), w[i])
        node[i] = k + step
        nn_cost[j] = np.inf
        # rows whose cached neighbour was i or j, and row i itself, are rescanned
        stale = active & ((nn == i) | (nn == j))
        stale[i] = active[i]
        for r in np.flatnonzero(stale):
            nn[r] = int(np.argmin(cost[r]))
            nn_cost[r] = cost[r, nn[r]]
        # any other row for which the merged cluster is now nearer takes it
        closer = active & (new < nn_cost)
        nn[closer] = i
        nn_cost[closer] = new[closer]
    return out


def cut_tree(linkage: np.ndarray, n_clusters: int) -> np.ndarray:
    """Flat labels 0..n_clusters-1 for the k leaves after undoing the last merges.

    Labels are numbered by the smallest leaf they contain, so they are stable for a given tree.
    """
    k = linkage.shape[0] + 1
    check_int("cut_tree", "n_clusters", n_clusters, low=1, high=k)
    parent = np.arange(2 * k - 1)
    for step in range(k - n_clusters):
        a, b = int(linkage[step, 0]), int(linkage[step, 1])
        parent[a] = parent[b] = k + step

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    roots = np.array([root(i) for i in range(k)])
    _, first = np.unique(roots, return_index=True)
    order = {roots[i]: rank for rank, i in enumerate(sorted(first))}
    return np.array([order[r] for r in roots], dtype=np.int64)


def choose_n_macro(linkage: np.ndarray, min_clusters: int = 3, max_clusters: int = 12) -> int:
    """Number of macro segments at the largest relative jump in merge height within a range."""
    k = linkage.shape[0] + 1
    max_clusters = min(max_clusters, k)
    min_clusters = min(max(min_clusters, 1), max_clusters)
    heights = linkage[:, 2]
    best, best_gap = min_clusters, -np.inf
    for n in range(min_clusters, max_clusters + 1):
        if n >= k:
            continue
        # cutting into n clusters undoes merges k-n .. ; the gap is between the last merge kept
        # and the first merge undone
        kept = heights[k - n - 1] if k - n - 1 >= 0 else 0.0
        undone = heights[k - n]
        gap = undone / max(kept, 1e-12)
        if gap > best_gap:
            best, best_gap = n, gap
    return best
