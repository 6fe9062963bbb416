"""Top event types and the most over-represented journey n-grams per segment.

Sequences are integer event-type codes per customer, either a padded 2-D array (as built by
:mod:`gpuseg.journey.sequences`, pad code 0 by default) or a list of 1-D sequences. N-grams are
counted by occurrence and encoded as one integer each (base ``max code + 1``), so counting is a
single :func:`numpy.unique` with no per-customer Python loop.

Over-representation of n-gram ``g`` in segment ``s`` is the ratio of smoothed relative
frequencies ``((c_s(g) + a) / (N_s + a V)) / ((c(g) + a) / (N + a V))`` with ``N`` the number of
n-grams counted, ``V`` the number of distinct n-grams of that order and ``a`` the additive
smoothing, which keeps rare n-grams from topping the list on a count of one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from gpuseg.profile.lifts import check_segments
from gpuseg.runtime.errors import UserInputError

log = logging.getLogger(__name__)


def _padded(sequences, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, valid mask) as 2-D arrays from a padded array or a list of sequences."""
    if isinstance(sequences, np.ndarray):
        if sequences.ndim != 2 or not np.issubdtype(sequences.dtype, np.integer):
            raise UserInputError("The 'sequences' parameter must be a 2-D integer array (customers x "
                                 f"steps) or a list of integer sequences, got shape {sequences.shape} "
                                 f"and dtype {sequences.dtype}.")
        x = sequences.astype(np.int64, copy=False)
        return x, x != pad
    seqs = [np.asarray(s, dtype=np.int64).ravel() for s in sequences]
    width = max((len(s) for s in seqs), default=0)
    x = np.zeros((len(seqs), max(width, 1)), dtype=np.int64)
    mask = np.zeros_like(x, dtype=bool)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = s
        mask[i, :len(s)] = True
    return x, mask


def _check(sequences, segments, n_segments, pad):
    x, mask = _padded(sequences, pad)
    seg = check_segments(segments, x.shape[0])
    if (x[mask] < 0).any():
        raise UserInputError("The 'sequences' parameter must hold non-negative event codes.")
    k = (int(seg.max()) + 1 if seg.size else 0) if n_segments is None else int(n_segments)
    return x, mask, seg, k


def _label(code: int, vocab: Sequence[str] | None) -> str:
    return str(vocab[code]) if vocab is not None and 0 <= code < len(vocab) else str(code)


def top_event_types(sequences, segments, n_segments: int | None = None, *,
                    vocab: Sequence[str] | None = None, top_n: int = 5,
                    pad: int = 0) -> dict[int, list[tuple[str, float, float]]]:
    """Most frequent event types of each segment with their share and lift.

    Parameters
    ----------
    sequences : 2-D int array or list of int sequences
        Event-type codes per customer (row-aligned with ``segments``).
    segments : array of int, shape (n,)
    n_segments : int, optional
    vocab : sequence of str, optional
        Name of each code (default: the code as text).
    top_n : int, default 5
    pad : int, default 0
        Padding code of a 2-D array (ignored for a list of sequences).

    Returns
    -------
    dict
        ``segment -> [(event_type, share of the segment's events, share / population share)]``
        by decreasing share.
    """
    x, mask, seg, k = _check(sequences, segments, n_segments, pad)
    codes = x[mask]
    owner = np.broadcast_to(seg[:, None], x.shape)[mask]
    width = int(codes.max()) + 1 if codes.size else 1
    counts = np.bincount(owner * width + codes, minlength=k * width).reshape(k, width).astype(np.float64)
    pop = counts.sum(axis=0) / max(counts.sum(), 1.0)
    out = {}
    for s in range(k):
        total = counts[s].sum()
        if total == 0:
            out[s] = []
            continue
        share = counts[s] / total
        order = np.lexsort((np.arange(width), -share))[:top_n]
        out[s] = [(_label(int(c), vocab), float(share[c]), float(share[c] / pop[c]))
                  for c in order if counts[s, c] > 0]
    return out


def journey_ngrams(sequences, segments, n_segments: int | None = None, *,
                   n: int | Sequence[int] = (2, 3), top_n: int = 5, min_count: int = 5,
                   smoothing: float = 1.0, vocab: Sequence[str] | None = None,
                   pad: int = 0) -> dict[int, list[tuple[tuple[str, ...], int, float]]]:
    """Journey n-grams most over-represented in each segment against the population.

    Parameters
    ----------
    sequences : 2-D int array or list of int sequences
        Event-type codes per customer, in time order.
    segments : array of int, shape (n_customers,)
    n_segments : int, optional
    n : int or sequence of int, default (2, 3)
        N-gram orders to count (each >= 1).
    top_n : int, default 5
    min_count : int, default 5
        Minimum occurrences in the segment for an n-gram to be listed.
    smoothing : float, default 1.0
        Additive smoothing ``a`` (> 0).
    vocab : sequence of str, optional
    pad : int, default 0

    Returns
    -------
    dict
        ``segment -> [(ngram as a tuple of names, count in the segment, over-representation)]``
        by decreasing over-representation (ties: count, then the n-gram).
    """
    orders = [n] if isinstance(n, int | np.integer) else list(n)
    if not orders or any(not isinstance(o, int | np.integer) or o < 1 for o in orders):
        raise UserInputError(f"The 'n' parameter must be an int >= 1 or a list of them, got {n!r}.")
    if not smoothing > 0:
        raise UserInputError(f"The 'smoothing' parameter must be > 0, got {smoothing!r}.")
    x, mask, seg, k = _check(sequences, segments, n_segments, pad)
    base = int(x[mask].max()) + 1 if mask.any() else 1
    candidates: dict[int, list[tuple[tuple[str, ...], int, float]]] = {s: [] for s in range(k)}
    for order in orders:
        if order > x.shape[1] or base ** order >= 2**62 // max(k, 1):
            continue
        valid = np.ones((x.shape[0], x.shape[1] - order + 1), dtype=bool)
        code = np.zeros(valid.shape, dtype=np.int64)
        for j in range(order):
            window = slice(j, j + valid.shape[1])
            valid &= mask[:, window]
            code = code * base + x[:, window]
        owner = np.broadcast_to(seg[:, None], valid.shape)[valid]
        code = code[valid]
        if code.size == 0:
            continue
        grams, pop_count = np.unique(code, return_counts=True)
        size = base ** order
        keys, seg_count = np.unique(owner * size + code, return_counts=True)
        key_seg, key_code = keys // size, keys % size
        n_pop, n_distinct = code.size, grams.size
        n_seg = np.bincount(owner, minlength=k)
        pop_rate = (pop_count[np.searchsorted(grams, key_code)] + smoothing) / (n_pop + smoothing * n_distinct)
        seg_rate = (seg_count + smoothing) / (n_seg[key_seg] + smoothing * n_distinct)
        ratio = seg_rate / pop_rate
        for s, c, cnt, r in zip(key_seg.tolist(), key_code.tolist(), seg_count.tolist(), ratio.tolist(),
                                strict=True):
            if cnt >= min_count:
                parts = []
                for _ in range(order):
                    parts.append(_label(c % base, vocab))
                    c //= base
                candidates[s].append((tuple(reversed(parts)), int(cnt), float(r)))
    return {s: sorted(c, key=lambda g: (-g[2], -g[1], g[0]))[:top_n] for s, c in candidates.items()}
