"""Processes that train together: where this one stands (the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment that
torchrun, ``accelerate launch`` and ``core.cli.launch`` set), the process group (through Accelerate's PartialState:
gloo between CPU processes, NCCL between GPUs), and the few collective operations the training loop needs.

One process (no such environment) is world size 1 and every operation here is a no-op, so the single-process path
is unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run, its metrics and checkpoints, and prints the result."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                break
    return default


def current() -> World:
    """This process's World, from the launcher's environment (world size 1 when there is none)."""
    size = _env_int("WORLD_SIZE", default=1)
    return World(_env_int("RANK", default=0), size, _env_int("LOCAL_RANK", default=0)) if size > 1 else World()


def init(device: str) -> World:
    """Join the job's process group (once; Accelerate's PartialState owns it) and, on CUDA, take this process's GPU
    (``LOCAL_RANK``), so that "cuda" means it from here on. Returns ``current()``."""
    world = current()
    if not world.distributed:
        return world
    import torch
    from accelerate import PartialState

    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(world.local_rank)
    state = PartialState(cpu=not on_gpu)
    if state.num_processes != world.size:
        raise RuntimeError(f"the process group has {state.num_processes} processes, the environment says "
                           f"{world.size}")
    logger.debug("rank %d of %d joined (%s)", world.rank, world.size, state.backend)
    return world


def _group_device() -> Any:
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: Sequence[float]) -> list[float]:
    """Each value summed over every process (float64 on the wire); the values themselves for one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(value) for value in values]
    import torch

    tensor = torch.tensor(list(values), dtype=torch.float64, device=_group_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_sum_grads(parameters: Iterable[Any]) -> None:
    """Sum the gradients of ``parameters`` over every process, in place, in one flat all-reduce per dtype (what
    DistributedDataParallel's buckets do, without its hooks: exact whatever each process's share of the batch, also
    an empty one). A parameter without a gradient counts as zeros."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    import torch

    params = [param for param in parameters if param.requires_grad]
    for dtype in sorted({param.dtype for param in params}, key=str):
        group = [param for param in params if param.dtype == dtype]
        for param in group:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        flat = torch.cat([param.grad.reshape(-1) for param in group])  # (sum of numel,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for param in group:
            count = param.grad.numel()
            param.grad.copy_(flat[offset : offset + count].view_as(param.grad))
            offset += count


def barrier() -> None:
    """Wait until every process gets here (nothing for one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shard(items: Sequence[T], world: World) -> list[T]:
    """This process's contiguous share of ``items`` (sizes differ by at most one; a share may be empty)."""
    base, extra = divmod(len(items), world.size)
    start = world.rank * base + min(world.rank, extra)
    return list(items[start : start + base + (1 if world.rank < extra else 0)])


def gather_to_main(value: T) -> list[T] | None:
    """Every process's ``value`` in rank order on rank 0 (None on the others); ``[value]`` for one process. The
    values travel pickled between this job's own processes (never a file)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
