"""How many CPU threads each k-means phase gives torch's intra-op pool (OpenMP + MKL).

Why this exists (gpuseg issue 12): on a 2-core machine shared with two busy processes, a
default fit (500k x 64, k=100) went from 0.67 s to 13.8 s, while scikit-learn went 4.6 s ->
20.9 s. Measured causes, in order of weight:

1. Spinning waits. torch's bundled libgomp busy-waits (``GOMP_SPINCOUNT``, ~300k spins)
   at the end of every parallel region. With more runnable threads than free cores, the
   thread that finished first spins on a core its sibling needs, so every region lasts until
   the scheduler gets round to the laggard (one time slice, milliseconds). The same fit with
   2 threads under 2 spinners took ~25x longer with the default wait policy than with
   ``OMP_WAIT_POLICY=PASSIVE``; that variable is read once when libgomp loads, before any
   gpuseg code runs, so a library cannot change it; it can only avoid multi-thread regions.
2. Many tiny regions. k-means++ seeding makes ~10 parallel regions per centre on a
   6 x 12k block, the mini-batch steps a few per 4096-row batch: microseconds of work each, a
   millisecond-scale stall each under load, and little to gain from a second thread even on a
   quiet machine.
3. Thread count above the free cores: torch starts one thread per core whatever else runs.

So each phase asks :func:`choose_threads` for a count from the size of its largest parallel
region (one thread below ``MIN_WORK_PER_THREAD`` multiply-adds per thread) and, only when that
allows more than one, from the cores that are free right now (run queue minus this process's
own running threads). The count never exceeds ``torch.get_num_threads()``, so a caller's
own limit (``OMP_NUM_THREADS``, ``torch.set_num_threads``) still holds. Results did not
change with the count in our checks (the GEMM splits rows, not the inner dimension; the
centre sums are ``index_add_`` in row order); a test compares 1 thread with the default bit
for bit.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Multiply-adds of a region's GEMM below which a thread is not worth waking: ~2-4 ms of
# single-core float32 work, well above a region's quiet overhead (~10 us) and comparable to the
# scheduler slice one stalled thread costs on a busy machine.
MIN_WORK_PER_THREAD = 1 << 24

AUTO = None
TORCH = "torch"  # leave torch's own setting alone (the behaviour before issue 12)

_PROBE_SAMPLES = 3
_PROBE_GAP_S = 0.0005


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` quota (``None`` when unlimited or unknown)."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _own_running() -> int:
    """Threads of this process in state R (running or runnable) now."""
    n = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        # the state follows the parenthesised command name, which may contain spaces
        if stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R":
            n += 1
    return n


def busy_elsewhere() -> float | None:
    """Cores of this process's share that other processes keep busy right now.

    Reads the kernel's run queue length (``/proc/loadavg``, field 4, which counts runnable
    threads system-wide) and subtracts this process's own running threads, so that a fit
    does not count its own previous work as load (the 1-minute load average would). The
    median of a few samples ~0.5 ms apart smooths the snapshot; scaled by this process's
    share of the machine's CPUs when the affinity is narrower. ``None`` where ``/proc`` is
    unavailable.
    """
    samples = []
    try:
        for i in range(_PROBE_SAMPLES):
            if i:
                time.sleep(_PROBE_GAP_S)
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            samples.append(max(0, running - _own_running()))
    except (OSError, ValueError, IndexError):
        return None
    others = sorted(samples)[len(samples) // 2]
    return others * available_cores() / max(os.cpu_count() or 1, 1)


def choose_threads(
    work: float,
    requested: int | str | None = AUTO,
    *,
    cores: int | None = None,
    busy: Callable[[], float | None] | float | None = busy_elsewhere,
) -> int | None:
    """Threads for a phase whose largest parallel region does ``work`` multiply-adds.

    Parameters
    ----------
    work : float
        Multiply-adds of the phase's largest parallel region (e.g. ``rows x K x d`` of one
        chunk's distance GEMM).
    requested : None, int or "torch"
        The estimator's ``n_threads``: ``None`` chooses, an int is used as given, ``"torch"``
        returns ``None`` (leave ``torch.get_num_threads()`` as it is).
    cores : int, optional
        Cores available; ``min(available_cores(), torch.get_num_threads())`` when omitted.
    busy : callable, float or None
        Cores kept busy by other processes, or a callable measuring it; only consulted when
        the work allows more than one thread, so small phases never pay for the probe.

    Returns
    -------
    int or None
        The thread count, at least 1; ``None`` for ``requested="torch"``.
    """
    if requested == TORCH:
        return None
    if requested is not None:
        return int(requested)
    by_work = max(1, int(work // MIN_WORK_PER_THREAD))
    if by_work == 1:
        return 1
    if cores is None:
        cores = min(available_cores(), torch.get_num_threads())
    n = min(cores, by_work)
    if n <= 1:
        return 1
    others = busy() if callable(busy) else busy
    if others is not None:
        # a core counts as free when less than half of it is taken (median snapshot)
        n = min(n, max(1, math.floor(cores - others + 0.5)))
    return n


class limit_threads:  # noqa: N801 - used like a function, as contextlib's helpers are
    """Run a block with ``n`` torch intra-op threads, then restore the previous count.

    Reusable (one phase may enter it once per candidate), not re-entrant. ``None`` or the
    current count leaves torch alone. ``torch.set_num_threads`` is process-wide: other Python
    threads running torch CPU code at the same time see the limit too.
    """

    def __init__(self, n: int | None):
        self.n = n
        self._before: int | None = None

    def __enter__(self) -> limit_threads:
        before = torch.get_num_threads()
        if self.n is not None and self.n != before:
            self._before = before
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None


def phase_threads(device: torch.device, work: float, requested: int | str | None) -> limit_threads:
    """:class:`limit_threads` for one phase on ``device`` (a no-op on CUDA: the GPU does it)."""
    if device.type != "cpu":
        return limit_threads(None)
    return limit_threads(choose_threads(work, requested))
