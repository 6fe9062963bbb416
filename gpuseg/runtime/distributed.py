"""torch.distributed set-up and collectives, for jobs launched with torchrun or by Slurm.

Under torchrun the process group is described by its variables (``WORLD_SIZE``, ``RANK``, ...).
Under Slurm without torchrun (``srun -n 4 gpuseg ...``, or Hydra's submitit launcher,
``hydra/launcher=submitit_slurm``), :func:`export_slurm_environment` sets the same variables from
Slurm's, through submitit's own helper: gpuseg carries no cluster code of its own.

The one home of the process-group set-up (:func:`init_from_env`) and of the collectives the
data-parallel estimators use (k-means statistics, journey losses). Collectives run on the
backend's device: NCCL needs CUDA tensors and gloo CPU tensors, so tensors are moved there and
back as needed; outside a process group of more than one rank every helper is a no-op.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gpuseg.runtime.errors import ConfigError

log = logging.getLogger(__name__)


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
    Without torchrun's variables (WORLD_SIZE unset or 1) this is a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Rank(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    log.info("rank %d of %d on %s", rank, dist.get_world_size(), device)
    return Rank(rank, dist.get_world_size(), device)


def barrier(rank: Rank) -> None:
    """Wait for every rank of ``rank``'s job (no-op in a single process)."""
    if rank.world > 1:
        dist.barrier()


def barrier_all() -> None:
    """Wait for every rank of the current process group (no-op outside one)."""
    if is_distributed():
        dist.barrier()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
