"""Process-group setup for ``torchrun`` (DDP): NCCL on CUDA, gloo on the CPU; rank 0 writes files.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; a plain
``python main.py`` has none of them and runs as a single process without a process group.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from utils.config import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and samples."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (set by torchrun), found {value!r}") from None


def init_distributed(device_name: str | None = "auto") -> DistributedContext:
    """Join the process group when launched by ``torchrun`` and pick this process's device.

    Args:
        device_name: the config's ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``). Under torchrun on
            CUDA each process takes ``cuda:<LOCAL_RANK>``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if world_size == 1:
        return DistributedContext(0, 1, 0, device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                "launch at most one torchrun process per GPU"
            )
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    logger.info("rank %d/%d (local %d) on %s, backend %s", rank, world_size, local_rank, device, backend)
    return DistributedContext(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    """Wait for all processes (no-op for a single process)."""
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Mean of a tensor over all processes (returned as a new tensor; the input is left untouched)."""
    value = value.detach().clone()
    if ctx.is_distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world_size
    return value


def all_gather_objects(obj: Any, ctx: DistributedContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; ``[obj]`` for a single process)."""
    if not ctx.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, ctx: DistributedContext) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_task(shard_index: int | None = None, num_shards: int | None = None, key: str = "sampling") -> tuple[int, int]:
    """(index, count) of this process's share of a job: explicit values (cluster job arrays), else torchrun's
    RANK/WORLD_SIZE, else (0, 1). ``key`` names the config section in error messages (``<key>.shard_index``)."""
    if (shard_index is None) != (num_shards is None):
        raise ValueError(f"set both {key}.shard_index and {key}.num_shards, found {shard_index} and {num_shards}")
    if shard_index is None:
        shard_index, num_shards = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if not 0 <= int(shard_index) < int(num_shards):
        raise ValueError(f"{key}.shard_index must be in [0, {key}.num_shards={num_shards}), found {shard_index}")
    return int(shard_index), int(num_shards)
