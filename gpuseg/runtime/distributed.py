"""torch.distributed set-up for jobs launched with torchrun (or Slurm's srun + torchrun)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


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
    """Wait for every rank (no-op in a single process)."""
    if rank.world > 1:
        dist.barrier()
