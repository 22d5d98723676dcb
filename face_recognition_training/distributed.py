"""Process-group set-up for ``torchrun`` (one process per GPU) and the few collectives training needs.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) training runs as a single process and
no process group is created. Backend: NCCL on CUDA, gloo on the CPU. Nothing happens at import.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from utils.config import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, and its ``device``."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and plots and runs the verification."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (set by torchrun), found {value!r}") from None


def setup_distributed(device_name: str | None = "auto") -> DistContext:
    """Read torchrun's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``, pick the device and init the process group.

    Args:
        device_name: ``auto``, ``cpu``, ``cuda`` (-> ``cuda:LOCAL_RANK`` under torchrun) or ``cuda:N``.
    """
    world_size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices visible); "
                "launch at most one torchrun process per GPU"
            )
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        log.info("rank %d/%d on %s (%s)", rank, world_size, device, backend)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed(ctx: DistContext) -> None:
    """Destroy the process group created by :func:`setup_distributed`."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_float(value: float, ctx: DistContext) -> float:
    """Rank 0's ``value`` on every rank (e.g. the mean verification accuracy for the LR schedule)."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def all_gather(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's picklable ``obj``, as a list indexed by rank, on every rank."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    """Wait for all ranks (no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()
