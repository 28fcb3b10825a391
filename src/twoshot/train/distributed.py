"""Multi-process training under ``torchrun``: process group set-up and the few collectives the
trainer needs. A plain ``python``/``twoshot train`` run is a world of one and calls nothing.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the backend is NCCL
on CUDA and gloo on CPU. Each process trains ``batch_size`` samples per step, so the global
batch is ``batch_size x world size``. A caller that initialised a process group itself (any
size, one process included) is joined as it is: training then goes through DDP and the
group's collectives, which is how a machine with one GPU checks the NCCL path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from twoshot.errors import UserError


@dataclass
class DistContext:
    """This process's place in the run: rank among ``world`` processes, its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when this module created the process group
    grouped: bool = False  # in a process group (set up here or by the caller)

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """In a process group: the model is wrapped in DDP and collectives run (also for a
        group of one process that the caller initialised)."""
        return self.grouped or self.world > 1


def setup(device: torch.device) -> DistContext:
    """Join the process group described by torchrun's environment (if any), or the one the
    caller already initialised.

    device: the device asked for (cpu / cuda); under torchrun with CUDA each process takes
    ``cuda:LOCAL_RANK``. Returns the :class:`DistContext`; a world of one without torchrun
    and without an initialised group.
    """
    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not initialised:
        return DistContext(device=device)
    rank = dist.get_rank() if initialised else int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                "devices: start fewer processes (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not initialised:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, device, owns_group=not initialised, grouped=True)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, ctx: DistContext, op: str = "sum") -> torch.Tensor:
    """Sum / min / max of ``tensor`` over processes (in place; returned). No-op for one process."""
    if ctx.distributed:
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    """Wait for every process."""
    if ctx.distributed:
        dist.barrier()
