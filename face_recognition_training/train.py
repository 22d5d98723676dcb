"""Train a face-recognition backbone (iResNet + margin head) on a class-folder dataset.

``train(cfg)`` does the work; ``train_fr.py`` is the thin Hydra entry::

    python train_fr.py data.root=<class folders> [fr/head=arcface ...]
    torchrun --standalone --nproc_per_node=8 train_fr.py data.root=...

Per epoch: one pass over the data (AMP optional, gradient norms clipped), verification on the
``.bin`` benchmarks (rank 0, flip-sum embeddings), the LR schedule step, then rank 0 appends a line
to ``metrics.jsonl`` and writes ``checkpoint.pt`` (model, head, optimizer, scheduler, scaler, early
stopping, every rank's RNG states), ``backbone.pth`` (the unwrapped backbone state dict, loadable
with ``models.iresnet.load_iresnet``) and, on a new best mean accuracy, ``backbone_best.pth``, the
three as one unit (:func:`utils.atomic.write_files_together`: after a kill anywhere a rerun finds
the files of one epoch, never a mix), then ``metrics.png``. With ``train.resume`` a restarted run
continues from the last checkpoint; the batch order and augmentation of an epoch depend only on
(seed, epoch, rank), so an interrupted and resumed CPU run ends with the same weights as an
uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from face_recognition_training.dataset import EpochLoader
from face_recognition_training.evaluate import (
    EVAL_SETTINGS,
    evaluate_backbone,
    format_table,
    load_verification_sets,
    mean_accuracy,
)
from face_recognition_training.run_log import plot_metrics
from face_recognition_training.schedule import (
    SCHEDULES,
    EarlyStopping,
    build_scheduler,
    step_scheduler,
)
from face_recognition_training.shard_data import StreamLoader, build_training_data
from utils.atomic import finish_files_together
from utils.checkpoint import CheckpointError, check_state_dict, save_together, torch_load
from utils.distributed import (
    DistributedContext,
    all_gather_objects,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
)
from utils.metrics_log import MetricsLog
from utils.rng import capture_rng_state, restore_rng_state, seed_everything
from utils.settings import Choice, Number, check_settings

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.pth"
BEST_BACKBONE = "backbone_best.pth"
METRICS_PLOT = "metrics.png"
REFERENCE_BATCH = 512  # lr = base_lr * global_batch / REFERENCE_BATCH

#: What ``train`` checks before any work.
SETTINGS = (
    Number("data.width", low=0, high=10**8, integer=True),
    Number("data.depth", low=0, high=10**6, integer=True),
    Number("data.random_erasing", low=0, high=1),
    Number("data.image_size", low=16, high=4096, integer=True),
    Number("data.num_workers", low=0, high=256, integer=True),
    Number("optimizer.momentum", low=0, high=1),
    Number("optimizer.weight_decay", low=0),
    Number("train.seed", low=0, integer=True),
    Number("train.batch_size", low=1, high=65_536, integer=True),
    Number("train.base_lr", low=0, low_open=True),
    Number("train.grad_clip", low=0),
    Choice("train.amp", ("auto", True, False)),
    Choice("train.resume", (True, False)),
    Number("fr.backbone.net.num_features", low=1, high=8192, integer=True),
    Number("fr.backbone.net.dropout", low=0, high=1),
    Number("fr.head.loss.s", low=0, low_open=True),
    Number("fr.head.loss.m", low=0, high=math.pi),
    Number("fr.head.loss.std", low=0),
    Choice("fr.schedule.name", SCHEDULES),
    Number("fr.schedule.max_epochs", low=1, high=100_000, integer=True),
    Number("fr.schedule.factor", low=0, high=1, low_open=True),
    Number("fr.schedule.patience", low=0, integer=True),
    Number("fr.schedule.early_stop_patience", low=0, integer=True),
    Number("fr.schedule.milestones", low=0, integer=True, each=True),
    *EVAL_SETTINGS,
)


class FRModel(nn.Module):
    """Backbone and margin head as one module, so one DDP wrapper synchronises both."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for images (B, 3, 112, 112) in [-1, 1] and labels (B,)."""
        return self.head(self.backbone(images), labels)


def amp_enabled(setting: Any, device: torch.device) -> bool:
    """``train.amp``: ``auto`` -> on for CUDA only; booleans force it (CPU autocast uses bfloat16)."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"train.amp must be auto, true or false, found {setting!r}")


def train_one_epoch(
    model: nn.Module,
    fr_model: FRModel,
    loader: EpochLoader | StreamLoader,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: DictConfig,
    ctx: DistributedContext,
    amp: bool,
) -> dict[str, float]:
    """One pass over this rank's share of the data; returns mean loss, top-1 accuracy (%), images/s."""
    model.train()
    amp_dtype = torch.float16 if ctx.device.type == "cuda" else torch.bfloat16
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    seen, start = 0, time.perf_counter()
    bar = tqdm(loader.epoch(epoch), total=len(loader), desc=f"epoch {epoch + 1}", leave=False,
               disable=not (ctx.is_main and cfg.train.progress))
    for step, (images, labels) in enumerate(bar):
        images = images.to(ctx.device, non_blocking=True)  # (B, 3, 112, 112)
        labels = labels.to(ctx.device, non_blocking=True)  # (B,)
        with torch.autocast(device_type=ctx.device.type, dtype=amp_dtype, enabled=amp):
            logits = model(images, labels)  # (B, C), float32 (the head disables autocast)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(fr_model.backbone.parameters(), max_norm=cfg.train.grad_clip)
            nn.utils.clip_grad_norm_(fr_model.head.parameters(), max_norm=cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        seen += labels.shape[0]
        if step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    steps = len(loader)
    return {
        "loss": float(loss_sum.item()) / steps,
        "train_accuracy": 100.0 * float(correct.item()) / seen,
        "images_per_s": seen * ctx.world_size / (time.perf_counter() - start),
    }


def _resume(path: Path, fr_model: FRModel, optimizer: torch.optim.Optimizer, scheduler: Any,
            scaler: torch.amp.GradScaler, stopper: EarlyStopping, ctx: DistributedContext) -> int:
    """Load ``checkpoint.pt`` into the training objects; returns the number of finished epochs."""
    state = torch_load(path, map_location="cpu")
    check_state_dict(fr_model, state["model"], path)
    fr_model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    stopper.load_state_dict(state["early_stopping"])
    rng = state["rng"]
    if len(rng) != ctx.world_size:
        raise CheckpointError(
            f"{path} was written by {len(rng)} processes but this run has {ctx.world_size}; "
            "resume with the same number of processes (or start a new output_dir)"
        )
    restore_rng_state(rng[ctx.rank], ctx.device)
    log.info("resumed from %s after epoch %d", path, state["epoch"])
    return int(state["epoch"])


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) FR training as configured by ``fr_train_config``; returns the last epoch's record."""
    check_settings(cfg, SETTINGS)
    ctx = init_distributed(cfg.train.device)
    out_dir = Path(cfg.train.output_dir)
    file_log = None
    try:
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            file_log = logging.FileHandler(out_dir / "train.log")
            file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(file_log)
        return _train(cfg, ctx, out_dir)
    finally:
        if file_log is not None:
            logging.getLogger().removeHandler(file_log)
            file_log.close()
        cleanup_distributed()


def _train(cfg: DictConfig, ctx: DistributedContext, out_dir: Path) -> dict[str, Any]:
    seed_everything(cfg.train.seed + ctx.rank)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dataset, loader = build_training_data(cfg.data, cfg.train.batch_size, seed=cfg.train.seed, rank=ctx.rank,
                                          world_size=ctx.world_size,
                                          pin_memory=cfg.data.pin_memory and ctx.device.type == "cuda")
    schedule = cfg.fr.schedule
    needs_eval = schedule.name == "plateau" or schedule.early_stop_patience > 0
    sets = load_verification_sets(cfg.eval.bin_dir, cfg.eval.benchmarks) if ctx.is_main and cfg.eval.bin_dir else []
    if ctx.is_main and needs_eval and not sets:
        raise FileNotFoundError(
            f"fr/schedule={schedule.name} with early_stop_patience={schedule.early_stop_patience} needs verification "
            f"files, but none of {list(cfg.eval.benchmarks)} (.bin) is in eval.bin_dir={cfg.eval.bin_dir}; "
            "set eval.bin_dir or use fr/schedule=step"
        )

    backbone = instantiate(cfg.fr.backbone.net)
    head = instantiate(cfg.fr.head.loss, embedding_size=cfg.fr.backbone.net.num_features,
                       num_classes=dataset.num_classes)
    fr_model = FRModel(backbone, head).to(ctx.device)
    model: nn.Module = fr_model
    if ctx.is_distributed:
        model = DistributedDataParallel(fr_model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    global_batch = cfg.train.batch_size * ctx.world_size
    lr = cfg.train.base_lr * global_batch / REFERENCE_BATCH
    optimizer = instantiate(cfg.optimizer)(fr_model.parameters(), lr=lr)
    scheduler = build_scheduler(optimizer, schedule)
    amp = amp_enabled(cfg.train.amp, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp and ctx.device.type == "cuda")
    stopper = EarlyStopping(patience=int(schedule.early_stop_patience))
    metrics = MetricsLog(out_dir / "metrics.jsonl", key="epoch")

    start_epoch = 0
    if ctx.is_main and finish_files_together(out_dir, last=CHECKPOINT):
        log.warning("completed the epoch files whose writing was interrupted in %s", out_dir)
    barrier(ctx)
    if cfg.train.resume and (out_dir / CHECKPOINT).is_file():
        start_epoch = _resume(out_dir / CHECKPOINT, fr_model, optimizer, scheduler, scaler, stopper, ctx)
    if ctx.is_main:
        metrics.truncate(start_epoch - 1)
        log.info("%d images of %d identities, %d processes x batch %d, lr %.4g, amp %s, %d steps/epoch",
                 len(dataset), dataset.num_classes, ctx.world_size, cfg.train.batch_size, lr, amp, len(loader))

    record: dict[str, Any] = {}
    for epoch in range(start_epoch, schedule.max_epochs):
        if stopper.should_stop(epoch - 1):
            log.info("early stop before epoch %d: best mean accuracy %.2f%% at epoch %d",
                     epoch + 1, stopper.best_accuracy, stopper.best_epoch + 1)
            break
        lr_now = optimizer.param_groups[0]["lr"]
        record = {"epoch": epoch, "lr": lr_now,
                  **train_one_epoch(model, fr_model, loader, epoch, optimizer, scaler, cfg, ctx, amp)}
        results = (evaluate_backbone(fr_model.backbone, sets, ctx.device, cfg.eval.batch_size, amp,
                                     rule=str(cfg.eval.kfold_rule)) if sets else {})
        mean_acc = float(broadcast_object(mean_accuracy(results) if results else math.nan, ctx))
        if not math.isnan(mean_acc):
            record.update(eval=results, mean_accuracy=mean_acc)
        step_scheduler(scheduler, None if math.isnan(mean_acc) else mean_acc)
        improved = not math.isnan(mean_acc) and stopper.update(epoch, mean_acc)
        rng_states = all_gather_objects(capture_rng_state(ctx.device), ctx)
        if ctx.is_main:
            state = {
                "epoch": epoch + 1,
                "model": fr_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "early_stopping": stopper.state_dict(),
                "rng": rng_states,
                "num_classes": dataset.num_classes,
                "config": OmegaConf.to_container(cfg, resolve=True),
            }
            metrics.append(record)  # before the checkpoint: a resume truncates what the checkpoint lacks
            files = {CHECKPOINT: state, BACKBONE: fr_model.backbone.state_dict()}
            if improved:
                files[BEST_BACKBONE] = files[BACKBONE]
            save_together(out_dir, files, last=CHECKPOINT)
            plot_metrics(metrics.rows(), out_dir / METRICS_PLOT)
            log.info("epoch %d: loss %.4f, train acc %.2f%%, lr %.3g, %.1f img/s%s", epoch + 1, record["loss"],
                     record["train_accuracy"], lr_now, record["images_per_s"],
                     f", mean verification {mean_acc:.2f}%\n{format_table(results)}" if results else "")
        barrier(ctx)
    if ctx.is_main and start_epoch >= schedule.max_epochs:  # rerun after the last epoch: its plot may be missing
        plot_metrics(metrics.rows(), out_dir / METRICS_PLOT)
    return record


if __name__ == "__main__":  # the command line moved to the top-level script (issue 13)
    raise SystemExit("face_recognition_training.train is a library module: run `python train_fr.py` with the same "
                     "arguments")
