"""Expansion scoring: seed customers -> ranked audience, batched over many seed lists.

Scores (higher is more alike; for the ``l2`` metric similarities are minus squared distances):

- ``max``: similarity to the most similar seed;
- ``mean_top_m``: mean of the ``top_m`` highest seed similarities (robust to one odd seed);
- ``centroid``: similarity to the mean of the seeds (normalised for ``cosine``).

Every result also carries its nearest seed. With ``candidates="all"`` every customer is scored
exactly, tile by tile on the index's device (a tile x seeds matrix at a time, never N x N), and
all queries share each tile's matmul; with ``"index"`` only the index's neighbours of the seeds
(or of the centroid) are scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from gpuseg.cluster._validation import InvalidParameterError
from gpuseg.runtime import distributed as ddp
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.validation import str_options

log = logging.getLogger(__name__)

MODES = ("max", "mean_top_m", "centroid")
_OWNER = "LookalikeIndex.expand"
#: similarity evaluations (customers x seeds) above which candidates="auto" uses the index
_ALL_BUDGET = 2_000_000_000
#: elements of one tile x seeds similarity block
_TILE_ELEMENTS = 1 << 24


def _check(size, threshold, mode, top_m, candidates) -> None:
    if mode not in MODES:
        raise InvalidParameterError(f"The 'mode' parameter of {_OWNER} must be {str_options(MODES)}. "
                                    f"Got {mode!r} instead.")
    if size is None and threshold is None:
        raise InvalidParameterError(f"{_OWNER} needs an audience 'size' or a similarity 'threshold' (or both).")
    if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1):
        raise InvalidParameterError(f"The 'size' parameter of {_OWNER} must be an int in the range [1, inf) or "
                                    f"None. Got {size!r} instead.")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not np.isfinite(threshold)):
        raise InvalidParameterError(f"The 'threshold' parameter of {_OWNER} must be a finite float or None. "
                                    f"Got {threshold!r} instead.")
    if not isinstance(top_m, (int, np.integer)) or isinstance(top_m, bool) or top_m < 1:
        raise InvalidParameterError(f"The 'top_m' parameter of {_OWNER} must be an int in the range [1, inf). "
                                    f"Got {top_m!r} instead.")
    if candidates not in ("auto", "all", "index"):
        raise InvalidParameterError(f"The 'candidates' parameter of {_OWNER} must be a str among "
                                    f"{{'auto', 'all', 'index'}}. Got {candidates!r} instead.")


class _Query:
    """Running state of one audience: its seeds, banned rows and best results so far."""

    def __init__(self, name: Any, rows: np.ndarray, offset: int, banned: np.ndarray, cap: int | None,
                 device: torch.device):
        self.name, self.rows, self.offset = name, rows, offset
        self.banned = torch.as_tensor(banned, device=device)
        self.cap = cap
        self.scores = torch.empty(0, device=device)
        self.found = torch.empty(0, dtype=torch.long, device=device)
        self.nearest = torch.empty(0, dtype=torch.long, device=device)
        self.nearest_score = torch.empty(0, device=device)

    def keep(self, rows, scores, nearest, nearest_score, threshold) -> None:
        ok = torch.isfinite(scores) & ~self.banned[rows]
        if threshold is not None:
            ok &= scores >= threshold
        rows, scores, nearest, nearest_score = rows[ok], scores[ok], nearest[ok], nearest_score[ok]
        self.scores = torch.cat([self.scores, scores])
        self.found = torch.cat([self.found, rows])
        self.nearest = torch.cat([self.nearest, nearest])
        self.nearest_score = torch.cat([self.nearest_score, nearest_score])
        if self.cap is not None and self.scores.numel() > self.cap:
            self._trim(self.cap)

    def _trim(self, n: int) -> None:
        # the best n by score, ties at the cut broken by the lower row: the same set whatever the
        # tiles or shards the rows came in (topk alone keeps an arbitrary one of tied rows)
        cut = self.scores.topk(n).values[-1]
        above = torch.nonzero(self.scores > cut).squeeze(1)
        tied = torch.nonzero(self.scores == cut).squeeze(1)
        tied = tied[torch.argsort(self.found[tied], stable=True)[:n - len(above)]]
        top = torch.cat([above, tied])
        self.scores, self.found = self.scores[top], self.found[top]
        self.nearest, self.nearest_score = self.nearest[top], self.nearest_score[top]

    def result(self) -> tuple[np.ndarray, ...]:
        # deterministic order: score descending, then row ascending
        rows = self.found.cpu().numpy()
        scores = self.scores.cpu().numpy()
        order = np.lexsort((rows, -scores))
        if self.cap is not None:
            order = order[:self.cap]
        return (rows[order], scores[order], self.nearest.cpu().numpy()[order],
                self.nearest_score.cpu().numpy()[order])


def _similarities(tile: torch.Tensor, others: torch.Tensor, metric: str,
                  others_sq: torch.Tensor | None) -> torch.Tensor:
    s = tile @ others.T
    if metric == "l2":
        s = 2 * s - tile.pow(2).sum(1, keepdim=True) - others_sq
    return s


def _score_tile(tile_rows: torch.Tensor, tile: torch.Tensor, queries: list[_Query], seeds: torch.Tensor,
                seeds_sq, centroids: torch.Tensor | None, cent_sq, metric: str, mode: str, top_m: int,
                threshold) -> None:
    sims = _similarities(tile, seeds, metric, seeds_sq)
    cent = _similarities(tile, centroids, metric, cent_sq) if centroids is not None else None
    for j, q in enumerate(queries):
        block = sims[:, q.offset:q.offset + len(q.rows)]
        best, arg = block.max(1)
        if mode == "max":
            score = best
        elif mode == "mean_top_m":
            score = block.topk(min(top_m, block.shape[1]), dim=1).values.mean(1)
        else:
            score = cent[:, j]
        q.keep(tile_rows, score, torch.as_tensor(q.rows, device=tile.device)[arg], best, threshold)


@dataclass(frozen=True)
class Shard:
    """Where a rank's index sits in the whole base under torchrun (see :mod:`gpuseg.lookalike.sharded`).

    Attributes
    ----------
    offset : int
        Row of the whole base that the index's row 0 is.
    n_total : int
        Rows of the whole base.
    ids : pyarrow.Array
        Customer ids of the whole base, in row order.
    """

    offset: int
    n_total: int
    ids: pa.Array


def _seed_vectors(index, rows: np.ndarray, shard: Shard | None) -> np.ndarray:
    """float32 vectors of seed rows of the whole base: each rank gives those of its shard."""
    if shard is None:
        return index.vectors_of(rows)
    n = len(index.ids_)
    mine = (rows >= shard.offset) & (rows < shard.offset + n)
    out = np.zeros((len(rows), index.d_), dtype=np.float32)
    out[mine] = index.vectors_of(rows[mine] - shard.offset)
    # every seed is held by exactly one rank: a sum of zeros and one vector is that vector, exactly
    return ddp.all_reduce_(torch.from_numpy(out)).numpy()


def _merged(result: tuple[np.ndarray, ...], cap: int | None, shard: Shard | None) -> tuple[np.ndarray, ...]:
    """Every rank's kept rows of one query, merged in the single-process order (score, then row)."""
    if shard is None or not ddp.is_distributed():
        return result
    rows, scores, nearest, nearest_score = result
    ints = ddp.all_gather_rows(torch.from_numpy(np.stack([rows, nearest], 1).astype(np.int64))).numpy()
    floats = ddp.all_gather_rows(torch.from_numpy(np.stack([scores, nearest_score], 1).astype(np.float32))).numpy()
    order = np.lexsort((ints[:, 0], -floats[:, 0]))
    if cap is not None:
        order = order[:cap]
    return ints[order, 0], floats[order, 0], ints[order, 1], floats[order, 1]


def expand_rows(index, seed_rows: dict[Any, np.ndarray], *, size: int | None, threshold: float | None,
                mode: str = "max", top_m: int = 5, exclude_rows: np.ndarray | None = None,
                candidates: str = "auto", include_seeds: bool = False,
                shard: Shard | None = None) -> dict[Any, pa.Table]:
    """Score and rank the audiences of several seed lists (rows of ``index``); see the module doc.

    Parameters
    ----------
    index : LookalikeIndex
        A built index (its ``vectors_``, ``metric`` and device are used).
    seed_rows : dict
        Query name -> seed row positions (non-empty, known).
    size, threshold, mode, top_m, candidates
        As in :meth:`LookalikeIndex.expand`.
    exclude_rows : ndarray of int, optional
        Rows never returned.
    include_seeds : bool
        Rank the seed rows among the audience too (by default they are never returned).
    shard : Shard, optional
        Under torchrun: ``index`` holds this rank's rows of the whole base; ``seed_rows`` and
        ``exclude_rows`` are rows of the whole base. Every rank must call with the same
        arguments; each scores its shard and all get the same tables, those of one process
        over the whole base.

    Returns
    -------
    dict
        Query name -> table ``rank, customer_id, score, nearest_seed, nearest_seed_score``.
    """
    _check(size, threshold, mode, top_m, candidates)
    device = index._device
    V = index.vectors_
    n = len(index.ids_)
    offset, n_total = (0, n) if shard is None else (shard.offset, shard.n_total)
    metric = "l2" if index.metric == "l2" else "ip"
    excluded_all = np.unique(np.asarray(exclude_rows if exclude_rows is not None else [], dtype=np.int64))
    excluded = np.zeros(n, dtype=bool)
    excluded[_local(excluded_all, offset, n)] = True
    names = list(seed_rows)
    queries, start = [], 0
    for name in names:
        rows = np.unique(np.asarray(seed_rows[name], dtype=np.int64))
        if len(rows) == 0:
            raise UserInputError(f"the seed list of query {name!r} is empty" if name is not None
                                 else "the seed list is empty: give at least one customer id")
        banned = excluded.copy()
        if not include_seeds:
            banned[_local(rows, offset, n)] = True
        n_banned = len(excluded_all) if include_seeds else len(np.union1d(excluded_all, rows))
        available = int(n_total - n_banned)
        cap = size
        if size is not None and size > available:
            log.warning("size=%d is more than the %d customers that are neither %sexcluded%s: the audience "
                        "is capped at %d", size, available, "" if include_seeds else "seeds nor ",
                        "" if name is None else f" (query {name!r})", available)
            cap = available
        queries.append(_Query(name, rows, start, banned, cap, device))
        start += len(rows)
    all_seeds = np.concatenate([q.rows for q in queries])
    seeds = torch.as_tensor(_seed_vectors(index, all_seeds, shard), device=device)
    seeds_sq = seeds.pow(2).sum(1)[None, :] if metric == "l2" else None
    centroids = cent_sq = None
    if mode == "centroid":
        centroids = torch.stack([seeds[q.offset:q.offset + len(q.rows)].mean(0) for q in queries])
        if index.metric == "cosine":
            centroids = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cent_sq = centroids.pow(2).sum(1)[None, :] if metric == "l2" else None

    if candidates == "auto":
        candidates = "index" if size is not None and n_total * len(all_seeds) > _ALL_BUDGET else "all"
    if candidates == "all":
        tile_rows = max(1024, _TILE_ELEMENTS // max(len(all_seeds) + len(queries), 1))
        for first in range(0, n, tile_rows):
            rows = torch.arange(first, min(n, first + tile_rows), device=device)
            tile = torch.as_tensor(np.array(V[first:first + tile_rows], dtype=np.float32), device=device)
            _score_tile(rows, tile, queries, seeds, seeds_sq, centroids, cent_sq, metric, mode, top_m, threshold)
    else:
        if size is None:
            raise InvalidParameterError(f"{_OWNER} with candidates='index' needs a 'size'.")
        for j, q in enumerate(queries):
            # every customer of the answer held here is among this shard's nearest
            k = min(n, (q.cap or 0) + int(q.banned.sum()))
            probe = (centroids[j:j + 1] if mode == "centroid" else seeds[q.offset:q.offset + len(q.rows)])
            cand = _neighbours_with_ties(index, probe.cpu().numpy().astype(np.float32), max(k, 1), n)
            tile = torch.as_tensor(np.array(V[cand], dtype=np.float32), device=device)
            single = _Query(q.name, q.rows, 0, q.banned.cpu().numpy(), q.cap, device)
            _score_tile(torch.as_tensor(cand, device=device), tile, [single], seeds[q.offset:q.offset + len(q.rows)],
                        None if seeds_sq is None else seeds_sq[:, q.offset:q.offset + len(q.rows)],
                        None if centroids is None else centroids[j:j + 1],
                        None if cent_sq is None else cent_sq[:, j:j + 1], metric, mode, top_m, threshold)
            queries[j] = single
    ids = (index.ids_ if shard is None else shard.ids).cast(pa.string())
    out = {}
    for q in queries:
        rows, scores, nearest, nearest_score = q.result()
        rows, scores, nearest, nearest_score = _merged((rows + offset, scores, nearest, nearest_score), q.cap, shard)
        out[q.name] = pa.table({
            "rank": pa.array(np.arange(1, len(rows) + 1, dtype=np.int64)),
            "customer_id": ids.take(pa.array(rows, pa.int64())),
            "score": pa.array(scores.astype(np.float32)),
            "nearest_seed": ids.take(pa.array(nearest, pa.int64())),
            "nearest_seed_score": pa.array(nearest_score.astype(np.float32)),
        })
    return out


def _neighbours_with_ties(index, probe: np.ndarray, k: int, n: int) -> np.ndarray:
    """Distinct rows among the ``k`` nearest of each probe, and every row tied with the k-th.

    A search cuts a run of equal scores at an arbitrary row; customers with the same vector are
    common (the same features), so the search is widened until each probe's list ends on a
    score worse than its k-th, and the exact scoring then breaks the tie by row as everywhere.
    """
    wide = min(n, k + 1)
    while True:
        scores, rows = index._search_rows(probe, wide)
        if wide >= n:
            break
        valid = rows[:, -1] >= 0
        if not (valid & (scores[:, -1] == scores[:, k - 1])).any():
            break
        wide = min(n, 2 * wide)
    return np.unique(rows[rows >= 0])


def _local(rows: np.ndarray, offset: int, n: int) -> np.ndarray:
    """The rows of the whole base that lie in ``[offset, offset + n)``, as rows of that shard."""
    rows = np.asarray(rows, dtype=np.int64)
    return rows[(rows >= offset) & (rows < offset + n)] - offset


def reach_curve(scores: np.ndarray, n_points: int = 60) -> dict[str, list]:
    """Audience size vs the similarity a marketer must accept to reach it.

    Parameters
    ----------
    scores : ndarray
        Audience scores sorted in descending order (rank 1 first).
    n_points : int
        Sizes sampled, geometrically spaced from 1 to ``len(scores)``.

    Returns
    -------
    dict
        ``size`` (audience sizes), ``min_score`` (score of the last customer at that size) and
        ``mean_score`` (mean score of the audience of that size).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return {"size": [], "min_score": [], "mean_score": []}
    sizes = np.unique(np.geomspace(1, scores.size, num=min(n_points, scores.size)).round().astype(np.int64))
    cumulative = np.cumsum(scores)
    return {"size": sizes.tolist(), "min_score": scores[sizes - 1].tolist(),
            "mean_score": (cumulative[sizes - 1] / sizes).tolist()}


def reach_at(scores: np.ndarray, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The similarity it takes to reach each named audience size (e.g. the expansion presets).

    Parameters
    ----------
    scores : ndarray
        Audience scores sorted in descending order (rank 1 first), as for :func:`reach_curve`.
    sizes : dict
        Name -> audience size asked.

    Returns
    -------
    dict
        Name -> ``size`` (asked), ``reached`` (customers there are, at most ``size``),
        ``min_score`` and ``mean_score`` of the audience of that size (None when it is empty).
    """
    scores = np.asarray(scores, dtype=np.float64)
    out = {}
    for name, size in sizes.items():
        reached = int(min(int(size), scores.size))
        out[name] = {"size": int(size), "reached": reached,
                     "min_score": float(scores[reached - 1]) if reached else None,
                     "mean_score": float(scores[:reached].mean()) if reached else None}
    return out
