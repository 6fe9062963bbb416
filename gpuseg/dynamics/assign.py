"""Streaming re-assignment to saved k-means centres, with hysteresis against the previous segments.

A customer whose nearest centre is not the previous segment's moves only when that centre is
closer than the previous one by a relative ``margin`` (``d_new < (1 - margin) * d_old``), or when
``confirm_runs`` consecutive runs have voted for the same new segment. Both rules can be turned
off (``margin=0`` moves on any change; ``confirm_runs`` None or 0 never moves on votes alone). The
pass goes through the customers in chunks: only ``chunk x K`` distances exist at a time, computed
by the k-means model's own ``transform`` (the code that assigned the training segments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from gpuseg.cluster.confidence import two_nearest
from gpuseg.data.events import to_microseconds
from gpuseg.runtime.validation import check_real

#: the label of "no previous segment" (a customer not seen before) and of "no pending move"
NONE = -1


def as_of_folder(as_of: str) -> str:
    """A filesystem-safe folder name for a cut-off: ``2024-06-30`` or ``2024-06-30T120000``."""
    value = np.datetime64(int(to_microseconds(as_of)), "us")
    day = value.astype("datetime64[D]")
    if value == day:
        return str(day)
    return re.sub(r"[^0-9T-]", "", str(value.astype("datetime64[s]")))


def folder_as_of_us(name: str) -> int | None:
    """The cut-off (microseconds) a folder made by :func:`as_of_folder` stands for, else None."""
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2})(?:T(\d{2})(\d{2})(\d{2}))?", name)
    if match is None:
        return None
    day, hh, mm, ss = match.groups()
    return to_microseconds(day if hh is None else f"{day} {hh}:{mm}:{ss}")


@dataclass
class AssignResult:
    """What :func:`assign_stream` returns, one entry per customer.

    Attributes
    ----------
    segment : ndarray of int64
        The segment after hysteresis.
    nearest : ndarray of int64
        The nearest centre.
    distance : ndarray of float64
        Distance to the centre of ``segment``.
    other : ndarray of float64
        Distance to the nearest centre other than ``segment`` (inf with one centre).
    candidate, votes : ndarray of int64
        A pending move (the segment voted for, -1 for none) and its consecutive votes.
    held : ndarray of bool
        Customers kept in their previous segment although another centre is nearer.
    """

    segment: np.ndarray
    nearest: np.ndarray
    distance: np.ndarray
    other: np.ndarray
    candidate: np.ndarray
    votes: np.ndarray
    held: np.ndarray


def assign_stream(model, x: torch.Tensor | np.ndarray, previous: np.ndarray, *, margin: float = 0.0,
                  confirm_runs: int | None = None, candidate: np.ndarray | None = None,
                  votes: np.ndarray | None = None, chunk_rows: int = 65536) -> AssignResult:
    """Assign every row to a centre of ``model``, chunk by chunk, with hysteresis.

    Parameters
    ----------
    model : MiniBatchKMeans
        A fitted (or loaded) model; its ``transform`` gives each chunk's distances.
    x : torch.Tensor or ndarray of shape (n, d)
        The customers (on the model's device for a tensor).
    previous : ndarray of int, shape (n,)
        Each customer's previous segment, -1 for a customer not seen before (assigned to the
        nearest centre).
    margin : float in [0, 1)
        Relative distance gain a move needs; 0 moves on any change of the nearest centre.
    confirm_runs : int or None
        Consecutive runs voting for the same new segment after which it moves anyway; None or
        0: votes alone never move a customer.
    candidate, votes : ndarray of int, optional
        The pending moves and their votes from the previous run (-1 / 0 for none).
    chunk_rows : int
        Customers per chunk.

    Returns
    -------
    AssignResult
    """
    check_real("assign_stream", "margin", margin, low=0.0, high=1.0, closed_high=False)
    n = int(x.shape[0])
    previous = np.asarray(previous, dtype=np.int64)
    candidate = np.full(n, NONE, np.int64) if candidate is None else np.asarray(candidate, dtype=np.int64)
    votes = np.zeros(n, np.int64) if votes is None else np.asarray(votes, dtype=np.int64)
    if not (previous.shape == candidate.shape == votes.shape == (n,)):
        raise ValueError(f"previous, candidate and votes must have one entry per row ({n})")
    k = int(model.n_clusters)
    if previous.size and (previous.max(initial=NONE) >= k or previous.min(initial=0) < NONE):
        raise ValueError(f"previous segments must be in [-1, {k})")
    out = AssignResult(*(np.empty(n, np.int64) for _ in range(2)), *(np.empty(n, np.float64) for _ in range(2)),
                       np.full(n, NONE, np.int64), np.zeros(n, np.int64), np.zeros(n, bool))
    confirm = int(confirm_runs or 0)
    for s in range(0, n, chunk_rows):
        e = min(n, s + chunk_rows)
        dist = model.transform(x[s:e])
        dist = torch.as_tensor(dist)
        near, d1, second, d2 = (t.cpu().numpy() for t in two_nearest(dist))
        prev = previous[s:e]
        known = prev >= 0
        d_prev = np.where(known, dist.gather(1, torch.as_tensor(np.maximum(prev, 0))[:, None].to(dist.device))
                          [:, 0].cpu().numpy(), np.inf)
        wants = known & (near != prev)
        by_margin = wants & (d1 < (1.0 - margin) * d_prev)
        new_votes = np.where(wants & (candidate[s:e] == near), votes[s:e] + 1, np.where(wants, 1, 0))
        by_votes = wants & (confirm > 0) & (new_votes >= confirm)
        held = wants & ~by_margin & ~by_votes
        seg = np.where(held, prev, near)
        out.segment[s:e] = seg
        out.nearest[s:e] = near
        out.distance[s:e] = np.where(held, d_prev, d1)
        # the nearest other centre: the second one for a customer at its nearest, the nearest when held
        out.other[s:e] = np.where(held, d1, d2)
        out.candidate[s:e] = np.where(held, near, NONE)
        out.votes[s:e] = np.where(held, new_votes, 0)
        out.held[s:e] = held
    return out


def transitions(previous: np.ndarray, segment: np.ndarray) -> pa.Table:
    """``from`` (null for customers not seen before), ``to`` and ``count`` of every pair that occurs."""
    previous = np.asarray(previous, dtype=np.int64)
    segment = np.asarray(segment, dtype=np.int64)
    pairs, counts = np.unique(np.stack([previous, segment], 1), axis=0, return_counts=True) if len(segment) \
        else (np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    frm = pairs[:, 0]
    return pa.table({"from": pa.array(frm.astype(np.int32), mask=frm < 0),
                     "to": pa.array(pairs[:, 1].astype(np.int32)),
                     "count": pa.array(counts.astype(np.int64))})


def flip_flops(before_previous: np.ndarray, previous: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Customers who moved back this run to the segment they left last run (A -> B -> A)."""
    before_previous, previous, segment = (np.asarray(a, dtype=np.int64) for a in (before_previous, previous, segment))
    return ((before_previous >= 0) & (previous >= 0) & (before_previous != previous) & (segment != previous)
            & (segment == before_previous))


def top_moves(before: np.ndarray, after: np.ndarray, scale: np.ndarray, names: list[str],
              top: int) -> tuple[list[list[str]], list[list[float]]]:
    """Per row, the ``top`` features that changed most, as changes in units of ``scale``.

    Parameters
    ----------
    before, after : ndarray of shape (n, p)
        The same customers' features at the two points (NaN where undefined).
    scale : ndarray of shape (p,)
        Population standard deviation of each feature (profile z-score units); features with
        no spread are left out.
    names : list of str
        The p feature names.
    top : int
        Features kept per row.

    Returns
    -------
    features, moves : list of list
        Names and signed z changes, largest absolute change first.
    """
    scale = np.asarray(scale, dtype=np.float64)
    usable = np.isfinite(scale) & (scale > 0)
    z = (np.asarray(after, np.float64) - np.asarray(before, np.float64)) / np.where(usable, scale, 1.0)
    z = np.where(usable[None, :] & np.isfinite(z), z, 0.0)
    order = np.argsort(-np.abs(z), axis=1, kind="stable")[:, :max(0, top)]
    feats, moves = [], []
    for row, cols in enumerate(order):
        kept = [c for c in cols if z[row, c] != 0.0]
        feats.append([names[c] for c in kept])
        moves.append([float(z[row, c]) for c in kept])
    return feats, moves
