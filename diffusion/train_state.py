"""Checkpoint files of a training run and exact resume.

``<run>/checkpoints/`` holds the files of the original IDiff-Face runs:

* ``model.ckpt``, ``ema_averaged_model.ckpt`` and ``ema_averaged_model_<step>.ckpt``: plain float32
  state dicts of the unwrapped DDPM (8 schedule buffers + ``eps_model.*``);
* ``optimization.ckpt``: ``global_step``, ``epoch``, ``optimizer``, ``lr_scheduler`` as in the
  original, plus what an exact resume needs: ``ema`` counters, ``grad_scaler``, per-rank ``rng``
  states, ``data_order`` and digests of the two weight files (files of different steps are
  detected instead of silently mixed).

A checkpoint is one atomic unit (:func:`utils.atomic.write_files_together`): the files of a step
are written into a temporary folder, committed by renaming it to ``checkpoints/.pending/``, then
moved into ``checkpoints/`` (``optimization.ckpt`` last). A kill before the commit leaves the
previous step's complete set; a kill while moving leaves the new step split between
``checkpoints/`` and ``.pending/``, which :func:`checkpoint_files` reads as the new step (files in
``.pending/`` take precedence) without changing anything, and which :func:`finish_interrupted_save`
(the trainer, at start-up and before each write) completes. Published run folders have no
``.pending/`` and read as they are.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel
from diffusion.ema import EMAModel
from diffusion.safe_config import UnsafeConfigError, build_allowed
from models.diffusion.unet import ConditionalUNet
from utils.atomic import PENDING_DIR, finish_files_together
from utils.checkpoint import CheckpointError, load_checkpoint, save_together, torch_load
from utils.distributed import DistributedContext, all_gather_objects
from utils.rng import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.ckpt"
EMA_FILE = "ema_averaged_model.ckpt"
OPTIMIZATION_FILE = "optimization.ckpt"
CHECKPOINT_SUFFIX = ".ckpt"

#: what a run folder's ``.hydra/config.yaml`` may build under ``diffusion`` (the original's and our configs' targets)
DIFFUSION_TARGETS: dict[str, Any] = {
    "diffusion.ddpm.DenoisingDiffusionProbabilisticModel": DenoisingDiffusionProbabilisticModel,
    "models.diffusion.unet.ConditionalUNet": ConditionalUNet,
    "torch.nn.MSELoss": nn.MSELoss,
}


@dataclass
class TrainingObjects:
    """What a checkpoint saves and restores (``model`` is the unwrapped DDPM, not the DDP wrapper)."""

    model: nn.Module
    ema: EMAModel
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any | None
    grad_scaler: torch.amp.GradScaler


def build_diffusion_model(train_cfg: Any, config_file: str | os.PathLike) -> DenoisingDiffusionProbabilisticModel:
    """The DDPM described by the ``diffusion`` key of a run folder's config, built from :data:`DIFFUSION_TARGETS` only.

    A run folder may come from anywhere: nothing but those classes, with plain arguments, is called
    (see :mod:`diffusion.safe_config`); anything else raises :class:`diffusion.safe_config.UnsafeConfigError`.
    """
    if "diffusion" not in train_cfg:
        raise UnsafeConfigError(f"{config_file}: no 'diffusion' key; expected the training config of a run folder")
    model = build_allowed(train_cfg.diffusion, DIFFUSION_TARGETS, config_file, "diffusion")
    if not isinstance(model, DenoisingDiffusionProbabilisticModel):
        raise UnsafeConfigError(f"{config_file}: diffusion._target_ must be "
                                f"diffusion.ddpm.DenoisingDiffusionProbabilisticModel, found {type(model).__name__}")
    return model


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
    files: dict[str, Any] = {MODEL_FILE: model_state, EMA_FILE: ema_state}
    if global_step in set(steps_of_checkpoints):
        files[f"ema_averaged_model_{global_step}.ckpt"] = ema_state
    files[OPTIMIZATION_FILE] = {
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
    }
    save_together(directory, files, last=OPTIMIZATION_FILE)
    logger.info("saved checkpoint of step %d to %s", global_step, directory)


def finish_interrupted_save(run_dir: str | os.PathLike) -> None:
    """Complete a checkpoint write that was killed after its commit, and remove the temporaries of one killed before.

    Only the process that writes ``run_dir`` may call this (rank 0 of its training run).
    """
    directory = Path(run_dir) / CHECKPOINT_DIR
    if finish_files_together(directory, last=OPTIMIZATION_FILE):
        logger.warning("completed the checkpoint write that was interrupted in %s", directory)


def checkpoint_files(run_dir: str | os.PathLike) -> dict[str, Path]:
    """``{file name: path}`` of the newest complete checkpoint of ``run_dir`` (ours or a published run folder).

    Files of ``checkpoints/.pending/`` (a committed write whose moves were interrupted) take
    precedence over those of ``checkpoints/``; nothing is changed on disk.
    """
    directory = Path(run_dir) / CHECKPOINT_DIR
    files: dict[str, Path] = {}
    for folder in (directory, directory / PENDING_DIR):
        if folder.is_dir():
            files.update({p.name: p for p in folder.iterdir() if p.name.endswith(CHECKPOINT_SUFFIX) and p.is_file()
                          and not p.name.startswith(".")})
    return files


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint to resume from."""
    return OPTIMIZATION_FILE in checkpoint_files(run_dir)


def _check_file_digest(module: nn.Module, path: Path, expected: str | None, optimization: Path) -> None:
    if expected is not None and weights_digest(module.state_dict()) != expected:
        raise CheckpointError(
            f"{path} does not belong to the step recorded in {optimization} (weights digest differs): the "
            "checkpoint files of two different steps are mixed (copied by hand, or written by an older version of "
            "this code that was killed mid-write); put back a complete set of model, EMA and optimization files"
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
    files = checkpoint_files(source)
    missing_files = [name for name in (OPTIMIZATION_FILE, MODEL_FILE, EMA_FILE) if name not in files]
    if missing_files:
        raise CheckpointError(f"{source / CHECKPOINT_DIR} has no {', '.join(missing_files)}; expected the run folder "
                              "of an earlier `python main.py`")
    optimization = files[OPTIMIZATION_FILE]
    state = torch_load(optimization, source_hint="expected the run folder of an earlier `python main.py`")
    missing = [k for k in ("global_step", "epoch", "optimizer") if k not in state] if isinstance(state, dict) else []
    if not isinstance(state, dict) or missing:
        raise CheckpointError(f"{optimization}: expected keys global_step, epoch, optimizer; missing {missing}")
    digests = state.get("digests", {})
    for module, name in ((objects.model, MODEL_FILE), (objects.ema.averaged_model, EMA_FILE)):
        load_checkpoint(module, files[name])
        _check_file_digest(module, files[name], digests.get(name), optimization)
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
                       optimization, ctx.world_size)
    if state.get("data_order") is not None and dict(state["data_order"]) != dict(data_order):
        logger.warning("data order differs from the checkpoint (%s now, %s then): dataset or global batch changed",
                       dict(data_order), state["data_order"])
    logger.info("restored step %d (epoch %d) from %s", global_step, epoch, optimization.parent)
    return global_step, epoch
