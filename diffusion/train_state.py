"""Checkpoint files of a training run and exact resume.

``<run>/checkpoints/`` holds the files of the original IDiff-Face runs:

* ``model.ckpt``, ``ema_averaged_model.ckpt`` and ``ema_averaged_model_<step>.ckpt``: plain float32
  state dicts of the unwrapped DDPM (8 schedule buffers + ``eps_model.*``);
* ``optimization.ckpt``: ``global_step``, ``epoch``, ``optimizer``, ``lr_scheduler`` as in the
  original, plus what an exact resume needs: ``ema`` counters, ``grad_scaler``, per-rank ``rng``
  states, ``data_order`` and digests of the two weight files (a run killed between writing the
  files is detected instead of silently mixing steps).

Every file is written with :func:`utils.checkpoint.save_atomic`; ``optimization.ckpt`` last.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.ema import EMAModel
from utils.checkpoint import CheckpointError, load_checkpoint, save_atomic, torch_load
from utils.distributed import DistributedContext, all_gather_objects
from utils.rng import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.ckpt"
EMA_FILE = "ema_averaged_model.ckpt"
OPTIMIZATION_FILE = "optimization.ckpt"


@dataclass
class TrainingObjects:
    """What a checkpoint saves and restores (``model`` is the unwrapped DDPM, not the DDP wrapper)."""

    model: nn.Module
    ema: EMAModel
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any | None
    grad_scaler: torch.amp.GradScaler


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """blake2b of every tensor's name and raw bytes: equal weights give equal digests on any device."""
    h = hashlib.blake2b(digest_size=16)
    for name, value in state_dict.items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_training_state(
    run_dir: Path,
    objects: TrainingObjects,
    global_step: int,
    epoch: int,
    data_order: Mapping[str, int],
    ctx: DistributedContext,
    steps_of_checkpoints: Iterable[int] = (),
) -> None:
    """Write the checkpoint files (rank 0); every rank must call it (RNG states and replica digests are gathered)."""
    model_state = objects.model.state_dict()
    rng_states = all_gather_objects(capture_rng_state(ctx.device), ctx)
    replica_digests = all_gather_objects(weights_digest(model_state), ctx)
    if not ctx.is_main:
        return
    if len(set(replica_digests)) > 1:
        logger.error("DDP replicas differ at step %d: weight digests %s", global_step, replica_digests)
    directory = run_dir / CHECKPOINT_DIR
    ema_state = objects.ema.averaged_model.state_dict()
    save_atomic(model_state, directory / MODEL_FILE)
    save_atomic(ema_state, directory / EMA_FILE)
    if global_step in set(steps_of_checkpoints):
        save_atomic(ema_state, directory / f"ema_averaged_model_{global_step}.ckpt")
    save_atomic(
        {
            "global_step": global_step,
            "epoch": epoch,
            "optimizer": objects.optimizer.state_dict(),
            "lr_scheduler": objects.lr_scheduler.state_dict() if objects.lr_scheduler is not None else None,
            "ema": objects.ema.state_dict(),
            "grad_scaler": objects.grad_scaler.state_dict(),
            "rng": rng_states,
            "data_order": dict(data_order),
            "digests": {MODEL_FILE: weights_digest(model_state), EMA_FILE: weights_digest(ema_state)},
            "replica_digests": replica_digests,
        },
        directory / OPTIMIZATION_FILE,
    )
    logger.info("saved checkpoint of step %d to %s", global_step, directory)


def _check_file_digest(module: nn.Module, path: Path, expected: str | None) -> None:
    if expected is not None and weights_digest(module.state_dict()) != expected:
        raise CheckpointError(
            f"{path} does not belong to the step recorded in {path.parent / OPTIMIZATION_FILE} (weights digest "
            "differs): the run was probably killed while writing its checkpoint files; restore an older copy"
        )


def load_training_state(
    source: Path, objects: TrainingObjects, data_order: Mapping[str, int], ctx: DistributedContext
) -> tuple[int, int]:
    """Restore model, EMA, optimizer, scheduler, scaler and (when the layout allows) RNG states from ``source``.

    Args:
        source: a run folder with ``checkpoints/`` (ours or an original IDiff-Face run).
        data_order: this run's ``{"seed", "n_items", "global_batch"}``; a difference from the
            checkpoint is logged (training continues, but not in the interrupted run's order).
    Returns:
        (global_step, epoch) of the checkpoint.
    """
    directory = source / CHECKPOINT_DIR
    state = torch_load(directory / OPTIMIZATION_FILE, source_hint="expected the run folder of an earlier `python main.py`")
    missing = [k for k in ("global_step", "epoch", "optimizer") if k not in state]
    if not isinstance(state, dict) or missing:
        raise CheckpointError(f"{directory / OPTIMIZATION_FILE}: expected keys global_step, epoch, optimizer; missing {missing}")
    digests = state.get("digests", {})
    load_checkpoint(objects.model, directory / MODEL_FILE)
    _check_file_digest(objects.model, directory / MODEL_FILE, digests.get(MODEL_FILE))
    load_checkpoint(objects.ema.averaged_model, directory / EMA_FILE)
    _check_file_digest(objects.ema.averaged_model, directory / EMA_FILE, digests.get(EMA_FILE))
    objects.optimizer.load_state_dict(state["optimizer"])
    if objects.lr_scheduler is not None and state.get("lr_scheduler") is not None:
        objects.lr_scheduler.load_state_dict(state["lr_scheduler"])
    global_step, epoch = int(state["global_step"]), int(state["epoch"])
    if "ema" in state:
        objects.ema.load_state_dict(state["ema"])
    else:  # an original run: the EMA has seen one update per step
        objects.ema.optimization_step = global_step
    if state.get("grad_scaler"):
        objects.grad_scaler.load_state_dict(state["grad_scaler"])
    rng = state.get("rng")
    if rng is not None and len(rng) == ctx.world_size:
        restore_rng_state(rng[ctx.rank], ctx.device)
    else:
        logger.warning("%s has no RNG states for %d processes: the resumed run is not bitwise reproducible",
                       directory / OPTIMIZATION_FILE, ctx.world_size)
    if state.get("data_order") is not None and dict(state["data_order"]) != dict(data_order):
        logger.warning("data order differs from the checkpoint (%s now, %s then): dataset or global batch changed",
                       dict(data_order), state["data_order"])
    logger.info("restored step %d (epoch %d) from %s", global_step, epoch, directory)
    return global_step, epoch
