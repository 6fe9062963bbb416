"""torch.distributed set-up and collectives, for jobs launched with torchrun or by Slurm.

Under torchrun the process group is described by its variables (``WORLD_SIZE``, ``RANK``, ...).
Under Slurm without torchrun (``srun -n 4 gpuseg ...``, or Hydra's submitit launcher,
``hydra/launcher=submitit_slurm``), :func:`export_slurm_environment` sets the same variables from
Slurm's, through submitit's own helper: gpuseg carries no cluster code of its own.

The one home of the process-group set-up (:func:`init_from_env`) and of the collectives the
data-parallel estimators use (k-means statistics, journey losses). Collectives run on the
backend's device: NCCL needs CUDA tensors and gloo CPU tensors, so tensors are moved there and
back as needed; outside a process group of more than one rank every helper is a no-op.

Work that only rank 0 does (a job that does not split its work) runs through :func:`on_main`:
inside it the collectives are no-ops on rank 0 (:func:`local_only`), the other ranks wait for it
on a second, CPU (gloo) group with a long timeout (``GPUSEG_DIST_WAIT_S``, default 12 h), and a
failure on rank 0 is told to them, so they stop with an error instead of waiting. Collectives
time out after ``GPUSEG_DIST_TIMEOUT_S`` (default 1800 s): a rank that died in the middle of
data-parallel work makes the others fail after that long at most (torchrun stops them at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from gpuseg.runtime.errors import ConfigError, GpusegError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds a collective waits for the other ranks (torch's own default for gloo)
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "GPUSEG_DIST_TIMEOUT_S", 1800.0
#: seconds the other ranks wait for rank 0's single-process work (a long stage at scale)
WAIT_ENV, DEFAULT_WAIT_S = "GPUSEG_DIST_WAIT_S", 12 * 3600.0

#: True inside :func:`local_only`: collectives are no-ops, the process acts as a single one
_LOCAL: ContextVar[bool] = ContextVar("gpuseg_local_only", default=False)
#: the gloo group with the long timeout that ranks wait on while rank 0 works alone
_WAIT_GROUP: list[Any] = []


class PeerFailed(GpusegError):
    """Another rank of the job failed: this one stops too (the cause is in that rank's log)."""


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable)
    if text in (None, ""):
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"environment variable {variable} must be a positive number of seconds, got {text!r}",
                          config_key=variable)
    return value


def export_slurm_environment() -> bool:
    """Give each task of a multi-task Slurm job step torchrun's variables, when torchrun did not.

    A step of several tasks (``SLURM_STEP_NUM_TASKS`` > 1) started without torchrun gets
    ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` from submitit's ``TorchDistributedEnvironment`` (the optional extra
    ``gpuseg[slurm]``), so the tasks form one data-parallel job. Without submitit that is an error:
    the tasks would otherwise each run the whole job and write the same outputs.

    Returns
    -------
    bool
        True when the variables were set here.
    """
    if "WORLD_SIZE" in os.environ or "SLURM_JOB_ID" not in os.environ:
        return False
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) <= 1:
        return False
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        raise ConfigError(f"this process is one of {os.environ['SLURM_STEP_NUM_TASKS']} tasks of a Slurm job step, "
                          "started without torchrun: install gpuseg[slurm] (submitit) to run them as one "
                          "data-parallel job, start gpuseg with torchrun inside srun, or set WORLD_SIZE=1 to "
                          "run each task on its own", config_key="hydra/launcher") from None
    # submitit reads Slurm's variables once told it runs under Slurm: its own jobs say so, a plain
    # srun step does not
    os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("Slurm task %d of %d (local rank %d, master %s:%d)", env.rank, env.world_size, env.local_rank,
             env.master_addr, env.master_port)
    return True


@dataclass(frozen=True)
class Rank:
    """This process's place in the job: rank, world size and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device) -> Rank:
    """Join the process group that torchrun describes in the environment, if any.

    NCCL on CUDA, gloo on CPU. Each rank uses ``cuda:LOCAL_RANK`` when the job's device is CUDA.
    Without torchrun's variables (WORLD_SIZE unset or 1) this is a single process. The group is
    made once per process (``gpuseg run`` joins it, then each job finds it); inside
    :func:`local_only` (rank 0 running a job alone) this is a single process too. Collectives time
    out after ``GPUSEG_DIST_TIMEOUT_S`` seconds.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world <= 1 or _LOCAL.get():
        return Rank(0, 1, device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        log.info("rank %d of %d on %s (collective timeout %.0fs)", dist.get_rank(), dist.get_world_size(), device,
                 timeout.total_seconds())
    return Rank(dist.get_rank(), dist.get_world_size(), device)


def _wait_group():
    """The CPU group that ranks wait on for rank 0 (made on first use, by every rank in turn)."""
    if not _WAIT_GROUP:
        _WAIT_GROUP.append(dist.new_group(backend="gloo", timeout=timedelta(seconds=_seconds(WAIT_ENV, DEFAULT_WAIT_S))))
    return _WAIT_GROUP[0]


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Act as a single process in this block: collectives are no-ops, :func:`is_distributed` is False."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def wait_for_all(failed: bool = False, *, what: str) -> None:
    """Every rank meets here, on the long-timeout group; if any says ``failed``, all raise :class:`PeerFailed`.

    For the end of work whose length differs between ranks (rank 0 aggregating what every
    rank made). A no-op outside a process group.
    """
    if not is_distributed():
        return
    flag = torch.tensor([int(failed)], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_wait_group())
    if int(flag.item()) and not failed:
        raise PeerFailed(f"another rank failed in {what}: this rank stops too (see that rank's error)")


def on_main(work: Callable[[], T], *, what: str) -> T | None:
    """Run ``work`` on rank 0 alone while the other ranks wait; its result there, None elsewhere.

    Inside ``work`` rank 0 acts as a single process (:func:`local_only`), so estimators that
    would all-reduce across ranks fit on its data alone. When ``work`` fails on rank 0 the
    others are told, and raise :class:`PeerFailed` naming ``what``; rank 0 raises its own error.
    Outside a process group this just calls ``work``.
    """
    if not is_distributed():
        return work()
    if dist.get_rank() != 0:
        wait_for_all(what=f"{what} (run by rank 0 alone)")
        return None
    failed = True
    try:
        with local_only():
            result = work()
        failed = False
    finally:
        wait_for_all(failed, what=what)
    return result


def barrier(rank: Rank) -> None:
    """Wait for every rank of ``rank``'s job (no-op in a single process)."""
    if rank.world > 1 and is_distributed():
        dist.barrier()


def barrier_all() -> None:
    """Wait for every rank of the current process group (no-op outside one)."""
    if is_distributed():
        dist.barrier()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank (and not in :func:`local_only`)."""
    return not _LOCAL.get() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard_bounds(n: int, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` that ``rank`` holds: contiguous, sizes differing by one at most.

    ``rank``/``world`` default to this process's (``0, n`` outside a process group).
    """
    if rank is None or world is None:
        rank, world = rank_and_world()
    base, extra = divmod(int(n), int(world))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _comm_device(tensor: torch.Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return tensor.device if tensor.device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum`` or ``max``) that works for any backend/device pair."""
    if not is_distributed():
        return tensor
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    return _on_comm_device(tensor, lambda t: dist.all_reduce(t, op=reduce_op))


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src`` to every rank."""
    if not is_distributed():
        return tensor
    return _on_comm_device(tensor, lambda t: dist.broadcast(t, src=src))


def _on_comm_device(tensor: torch.Tensor, collective) -> torch.Tensor:
    """Run an in-place collective on the backend's device, copying back when the tensor lives elsewhere."""
    comm = _comm_device(tensor)
    if tensor.device == comm:
        collective(tensor)
        return tensor
    moved = tensor.to(comm)
    collective(moved)
    tensor.copy_(moved)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``(m_r, d)`` tensor in rank order (``m_r`` may differ)."""
    if not is_distributed():
        return tensor
    rank, world = rank_and_world()
    sizes = torch.zeros(world, dtype=torch.int64, device=tensor.device)
    sizes[rank] = tensor.shape[0]
    all_reduce_(sizes)
    sizes_list = [int(s) for s in sizes.tolist()]
    longest = max(sizes_list)
    comm = _comm_device(tensor)
    padded = torch.zeros((longest,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=comm)
    padded[: tensor.shape[0]] = tensor.to(comm)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes_list, strict=True)]).to(tensor.device)


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank ``src``'s integer, on every rank (e.g. a seed drawn when ``random_state=None``)."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    broadcast_(t, src=src)
    return int(t.item())


def all_reduce_values(values: dict[str, float]) -> dict[str, float]:
    """Sum a dict of Python floats over every rank (e.g. loss numerators and counts)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    summed = all_reduce_(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    return dict(zip(keys, summed.tolist(), strict=True))
