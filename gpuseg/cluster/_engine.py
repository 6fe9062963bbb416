"""The k-means loops: seeding on a sample, mini-batch epochs, Lloyd passes, final assignment.

Every function works on a :class:`~gpuseg.cluster._source.Source` (chunks on the device) and,
inside a torch.distributed process group, all-reduces what it accumulates so every rank ends
with identical centres while reading only its own shard.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from gpuseg.cluster._assign import (
    LloydAccumulator,
    PreparedCenters,
    assign_chunk,
    matmul_precision,
)
from gpuseg.cluster._init import kmeans_plusplus, random_rows
from gpuseg.cluster._source import ResidentSource, Source
from gpuseg.cluster._threads import phase_threads
from gpuseg.runtime import distributed as ddp

log = logging.getLogger(__name__)


@dataclass
class KMeansState:
    """Centres and per-centre counts (the mini-batch learning rates are ``1 / count``)."""

    centers: torch.Tensor  # (K, d) float32 on the device
    counts: torch.Tensor  # (K,) float64 on the device
    n_steps: int = 0
    n_since_reassign: int = 0
    ewa: float | None = None
    ewa_min: float = math.inf
    no_improvement: int = 0
    history: list = field(default_factory=list)


@dataclass
class Settings:
    """The estimator's parameters as the loops need them (already validated)."""

    n_clusters: int
    batch_size: int
    chunk_rows: int
    precision: str
    reassignment_ratio: float
    max_no_improvement: int | None
    tol: float
    n_threads: int | str | None = None  # None: chosen per phase (see _threads)

    def threads(self, device: torch.device, rows: int, cols: int, d: int):
        """Thread limit for a phase whose largest region is a ``rows x cols x d`` GEMM."""
        return phase_threads(device, float(rows) * cols * d, self.n_threads)

    def chunk_threads(self, device: torch.device, n_rows: int, d: int):
        """Thread limit for chunked assignment of ``n_rows`` rows to the K centres."""
        return self.threads(device, min(self.chunk_rows, max(n_rows, 1)), self.n_clusters, d)


# ----------------------------------------------------------------------------- initialisation


def draw_init_samples(
    src: Source, init_size: int, local_rng: np.random.Generator, shared_rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Uniform sample of the (possibly sharded) data, split into seeding and validation sets.

    Each rank draws up to ``2 * init_size`` of its rows; rank counts decide how many of each
    rank's rows enter the global sample so it is uniform over the union of the shards.

    Returns
    -------
    init_x, valid_x : torch.Tensor
        Seeding and validation rows (identical on every rank).
    n_total : int
        Number of rows over all ranks.
    """
    want = 2 * init_size
    local = src.sample(want, local_rng)
    n_local = int(src.n_samples)
    rank, world = ddp.rank_and_world()
    counts = torch.zeros(world, dtype=torch.int64)
    counts[rank] = n_local
    ddp.all_reduce_(counts)
    n_total = int(counts.sum())
    if world > 1:
        # multivariate hypergeometric: how many of the global sample fall on each rank
        take = shared_rng.multivariate_hypergeometric(counts.numpy(), min(want, n_total))
        mine = int(take[rank])
        pick = np.sort(local_rng.choice(local.shape[0], size=mine, replace=False))
        local = local.index_select(0, torch.from_numpy(pick).to(local.device))
        sample = ddp.all_gather_rows(local)
    else:
        sample = local
    m = sample.shape[0]
    perm = torch.from_numpy(shared_rng.permutation(m)).to(sample.device)
    sample = sample.index_select(0, perm)
    if m <= init_size:
        return sample, sample, n_total
    return sample[:init_size], sample[init_size:], n_total


def choose_initial_centers(
    init, init_x: torch.Tensor, valid_x: torch.Tensor, n_init: int, settings: Settings,
    shared_rng: np.random.Generator,
) -> torch.Tensor:
    """Best of ``n_init`` seedings of ``init_x``, judged by inertia on ``valid_x``.

    Computed on rank 0 and broadcast, so every rank starts from the same centres.
    """
    k = settings.n_clusters
    device = init_x.device
    centers = torch.empty(k, init_x.shape[1], dtype=torch.float32, device=device)
    seeds = shared_rng.integers(0, 2**62, size=n_init)
    n, d = init_x.shape
    # k-means++ runs ~10 regions per centre on a (2 + ln k) x n block: one thread unless the
    # sample is huge; the polishing Lloyd iterations are chunk-sized GEMMs
    kpp_threads = settings.threads(device, n, 2 + int(math.log(k)), d)
    lloyd_threads = settings.chunk_threads(device, n, d)
    if ddp.rank_and_world()[0] == 0:
        if not isinstance(init, str):
            centers.copy_(torch.as_tensor(np.asarray(init), dtype=torch.float32))
        else:
            best = math.inf
            for i, seed in enumerate(seeds):
                gen = torch.Generator(device=device).manual_seed(int(seed))
                with kpp_threads:
                    if init == "k-means++":
                        cand = kmeans_plusplus(init_x, k, gen)
                    else:
                        cand = random_rows(init_x, k, gen)
                # raw seeds say little about where Lloyd ends (an outlier seed can cost a
                # whole blob); polish each candidate on the sample before judging it
                with lloyd_threads:
                    cand = sample_lloyd(init_x, cand, settings, SAMPLE_LLOYD_ITERS)
                    score = _inertia_of(valid_x, cand, settings)
                log.debug("init candidate %d: validation inertia %.6g", i, score)
                if score < best:
                    best, centers = score, cand
    return ddp.broadcast_(centers.contiguous())


SAMPLE_LLOYD_ITERS = 20


def sample_lloyd(x: torch.Tensor, centers: torch.Tensor, settings: Settings, iters: int
                 ) -> torch.Tensor:
    """Up to ``iters`` Lloyd iterations on an in-memory sample.

    Stops once the labels settle or the sample inertia improves by less than 0.01 % (the
    mini-batch and Lloyd passes over all the data take it from there).
    """
    src = ResidentSource(x, x.device, "init sample", checked=True)
    previous, last_inertia = None, math.inf
    for _ in range(iters):
        acc = LloydAccumulator(*centers.shape, x.device)
        prep = PreparedCenters(centers, settings.precision)
        labels = []
        with matmul_precision(settings.precision, x.device):
            for chunk in src.chunks(settings.chunk_rows):
                lab, d2 = assign_chunk(chunk, prep)
                acc.add(chunk, lab, d2)
                labels.append(lab)
        labels = torch.cat(labels)
        centers, n_empty = lloyd_update(acc, centers)
        inertia = float(acc.inertia)
        if n_empty == 0 and (
            (previous is not None and torch.equal(labels, previous))
            or inertia >= last_inertia * (1 - 1e-4)
        ):
            break
        previous, last_inertia = labels, inertia
    return centers


def _inertia_of(x: torch.Tensor, centers: torch.Tensor, settings: Settings) -> float:
    prep = PreparedCenters(centers, settings.precision)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    with matmul_precision(settings.precision, x.device):
        for i in range(0, x.shape[0], settings.chunk_rows):
            _, d2 = assign_chunk(x[i : i + settings.chunk_rows], prep)
            total += d2.sum(dtype=torch.float64)
    return float(total)


# ----------------------------------------------------------------------------- mini-batch


def minibatch_step(
    xb: torch.Tensor | None, state: KMeansState, settings: Settings, n_total: int,
    rng: np.random.Generator,
) -> tuple[bool, bool]:
    """One mini-batch update (scikit-learn's ``_mini_batch_step`` and convergence test).

    Centre ``j`` moves to ``(c_j * n_j + sum of its batch points) / (n_j + batch count)``, so
    its learning rate decays as ``1 / n_j``. Inside a process group the batch sums and counts
    are all-reduced first; a rank whose shard is exhausted passes ``xb=None``.

    Returns
    -------
    active : bool
        False when no rank had a batch (the epoch is over everywhere).
    converged : bool
        True when the EWA-smoothed batch inertia stopped improving (or the centre shift fell
        under ``tol``).
    """
    k, d = state.centers.shape
    device = state.centers.device
    distributed = ddp.is_distributed()
    if xb is not None and xb.shape[0]:
        prep = PreparedCenters(state.centers, settings.precision)
        sums = torch.zeros(k, d, dtype=torch.float32, device=device)
        bcounts = torch.zeros(k, dtype=torch.int64, device=device)
        binertia = torch.zeros((), dtype=torch.float64, device=device)
        with matmul_precision(settings.precision, device):
            for i in range(0, xb.shape[0], settings.chunk_rows):
                x = xb[i : i + settings.chunk_rows]
                labels, d2 = assign_chunk(x, prep)
                sums.index_add_(0, labels, x)
                bcounts += torch.bincount(labels, minlength=k)
                binertia += d2.sum(dtype=torch.float64)
        bcounts = bcounts.to(torch.float64)
        n_b = xb.shape[0]
    else:
        sums = torch.zeros(k, d, dtype=torch.float32, device=device)
        bcounts = torch.zeros(k, dtype=torch.float64, device=device)
        binertia = torch.zeros((), dtype=torch.float64, device=device)
        n_b = 0
    if distributed:
        rank0_n = float(n_b if ddp.rank_and_world()[0] == 0 else 0)
        packed = torch.cat([sums.double().flatten(), bcounts,
                            torch.stack([binertia, torch.tensor(float(n_b), dtype=torch.float64,
                                                                device=device),
                                         torch.tensor(rank0_n, dtype=torch.float64,
                                                      device=device)])])
        ddp.all_reduce_(packed)
        sums = packed[: k * d].view(k, d)
        bcounts = packed[k * d : k * d + k]
        binertia, n_b, rank0_n = packed[-3], int(packed[-2]), int(packed[-1])
    else:
        rank0_n = n_b
    if n_b == 0:
        return False, False

    old = state.centers
    new_counts = state.counts + bcounts
    moved = (old.double() * state.counts[:, None] + sums.double()) / new_counts.clamp_min(1.0)[:, None]
    centers = torch.where((bcounts > 0)[:, None], moved.float(), old)
    state.counts = new_counts
    state.n_steps += 1

    # re-seed centres that (almost) never win, from points of this batch (scikit-learn's rule)
    state.n_since_reassign += n_b
    if settings.reassignment_ratio > 0 and (
        bool((state.counts == 0).any()) or state.n_since_reassign >= 10 * k
    ):
        state.n_since_reassign = 0
        if rank0_n > 1:  # new centres are drawn from rank 0's batch, then broadcast
            centers = _reassign(centers, state, xb, settings, rng, rank0_n, distributed)

    shift = float(((centers - old) ** 2).sum()) if settings.tol > 0 else math.inf
    state.centers = centers
    return True, _converged(state, float(binertia) / n_b, n_b, n_total, shift, settings)


def _reassign(centers, state, xb, settings, rng, n_b, distributed):
    # every rank takes the same decisions from the same (all-reduced) counts
    counts = state.counts
    to_reassign = counts < settings.reassignment_ratio * counts.max()
    n_re = int(to_reassign.sum())
    if n_re == 0:
        return centers
    if n_re > n_b // 2:  # at most half a batch of new centres
        keep = torch.argsort(counts)[n_b // 2 :]
        to_reassign[keep] = False
        n_re = int(to_reassign.sum())
    centers = centers.clone()
    if not distributed or ddp.rank_and_world()[0] == 0:
        pick = torch.from_numpy(rng.choice(xb.shape[0], size=n_re, replace=False)).to(xb.device)
        centers[to_reassign] = xb.index_select(0, pick)
    if distributed:
        ddp.broadcast_(centers)
    if bool((~to_reassign).any()):
        state.counts[to_reassign] = counts[~to_reassign].min()
    log.debug("step %d: reassigned %d small cluster(s)", state.n_steps, n_re)
    return centers


def _converged(state, batch_inertia, n_b, n_total, shift, settings) -> bool:
    """EWA of the per-sample batch inertia, as in scikit-learn's ``_mini_batch_convergence``."""
    if state.ewa is None:
        state.ewa = batch_inertia
    else:
        alpha = min(1.0, 2.0 * n_b / (n_total + 1))
        state.ewa = state.ewa * (1 - alpha) + batch_inertia * alpha
    state.history.append(state.ewa)
    if settings.tol > 0 and shift <= settings.tol:
        log.debug("converged at step %d: centre shift %.3g <= tol", state.n_steps, shift)
        return True
    if state.ewa < state.ewa_min:
        state.no_improvement, state.ewa_min = 0, state.ewa
    else:
        state.no_improvement += 1
    if settings.max_no_improvement is not None and state.no_improvement >= settings.max_no_improvement:
        log.debug("converged at step %d: no EWA inertia improvement in %d steps",
                  state.n_steps, state.no_improvement)
        return True
    return False


def minibatch_epoch(
    src: Source, state: KMeansState, settings: Settings, n_total: int,
    rng: np.random.Generator,
) -> bool:
    """One shuffled pass over this rank's data in mini-batches; True once converged."""
    b = settings.batch_size
    rows = b * max(1, settings.chunk_rows // b)
    batches = _rebatch(src.chunks(rows, rng=rng), b)
    k, d = state.centers.shape
    # one batch per step: a few small regions each (one thread at the default 4096 rows)
    with settings.threads(state.centers.device, min(b, settings.chunk_rows), k, d):
        while True:
            xb = next(batches, None)
            active, converged = minibatch_step(xb, state, settings, n_total, rng)
            if converged:  # decided from all-reduced numbers: every rank stops at the same step
                return True
            if not active:
                return False


def _rebatch(chunks, b):
    for chunk in chunks:
        for i in range(0, chunk.shape[0], b):
            yield chunk[i : i + b]


# ----------------------------------------------------------------------------- Lloyd passes


def _assigned_chunks(src: Source, centers: torch.Tensor, settings: Settings):
    """Yield ``(chunk, labels, squared distances)`` for every chunk of this rank's rows."""
    prep = PreparedCenters(centers, settings.precision)
    rows = settings.chunk_rows
    # resident data keep their row norms, so each pass does not recompute them
    norms = src.sqnorm() if isinstance(src, ResidentSource) and prep.exact else None
    with matmul_precision(settings.precision, centers.device):
        for i, x in enumerate(src.chunks(rows)):
            xn = None if norms is None else norms[i * rows : i * rows + x.shape[0]]
            labels, d2 = assign_chunk(x, prep, xn)
            yield x, labels, d2


def _rows_hint(src: Source, settings: Settings) -> int:
    """This rank's row count when known (streams: assume full chunks)."""
    n = src.n_samples
    return settings.chunk_rows if n is None else int(n)


def lloyd_pass(src: Source, centers: torch.Tensor, settings: Settings) -> LloydAccumulator:
    """Assign every row to its nearest centre and accumulate sums, counts and inertia."""
    k, d = centers.shape
    device = centers.device
    acc = LloydAccumulator(k, d, device)
    with settings.chunk_threads(device, _rows_hint(src, settings), d):
        for x, labels, d2 in _assigned_chunks(src, centers, settings):
            acc.add(x, labels, d2)
    if ddp.is_distributed():
        packed = torch.cat([acc.sums.flatten(), acc.counts, acc.inertia.view(1)])
        ddp.all_reduce_(packed)
        acc.sums = packed[: k * d].view(k, d)
        acc.counts = packed[k * d : k * d + k]
        acc.inertia = packed[-1]
        dist = ddp.all_gather_rows(acc.far_dist[:, None])[:, 0]
        far = ddp.all_gather_rows(acc.far_rows)
        keep = dist.topk(min(acc.n_far, dist.shape[0])).indices
        acc.far_dist, acc.far_rows = dist[keep], far[keep]
    return acc


def lloyd_update(acc: LloydAccumulator, centers: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Means of the accumulated clusters; empty clusters move to the farthest points seen."""
    filled = acc.counts > 0
    new = torch.where(filled[:, None], (acc.sums / acc.counts.clamp_min(1.0)[:, None]).float(), centers)
    n_empty = int((~filled).sum())
    if n_empty:
        empty = torch.nonzero(~filled)[:, 0]
        order = torch.argsort(acc.far_dist, descending=True)
        m = min(n_empty, order.shape[0])
        new[empty[:m]] = acc.far_rows[order[:m]]
        log.debug("relocated %d empty cluster(s) to far points", m)
    return new, n_empty


def assign_all(src: Source, centers: torch.Tensor, settings: Settings, *, want_labels: bool = True
               ) -> tuple[torch.Tensor | None, float]:
    """Labels of this rank's rows (int32, on CPU) and the global inertia."""
    total = torch.zeros((), dtype=torch.float64, device=centers.device)
    parts = []
    with settings.chunk_threads(centers.device, _rows_hint(src, settings), centers.shape[1]):
        for _, labels, d2 in _assigned_chunks(src, centers, settings):
            total += d2.sum(dtype=torch.float64)
            if want_labels:
                parts.append(labels.to(torch.int32))
    ddp.all_reduce_(total.view(1))
    labels = torch.cat(parts).cpu() if want_labels and parts else None
    return labels, float(total)
