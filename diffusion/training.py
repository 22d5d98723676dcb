"""``train(cfg)``: the IDiff-Face training loop, from one CPU to many GPUs (DDP via torchrun), with exact resume.

One step: take this rank's share of the global batch of ``step`` (:class:`StepBatchSampler`), encode
it with the frozen VQ encoder (or read the latent cache), draw ``t``, ``eps`` and the whole-sample
context-dropout mask for the *global* batch from a generator seeded by ``(seed, step)`` and keep
this rank's slice, compute the DDPM loss, back-propagate (DDP averages gradients), clip, step Adam
and the cosine-with-warm-restarts schedule, update the EMA. Because the data order and the
diffusion noise depend on ``(seed, step)`` only, N processes with batch B train like one process
with batch N*B, and a resumed run continues exactly where the interrupted one stopped.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from diffusion.data import (
    DatasetError,
    FaceEmbeddingDataset,
    StepBatchSampler,
    check_data_paths,
    step_generator,
)
from diffusion.ddpm import DenoisingDiffusionProbabilisticModel
from diffusion.latent_cache import LatentCache, cache_fingerprint
from diffusion.train_monitor import (
    LOSS_PLOT_FILE,
    METRICS_FILE,
    plot_loss,
    save_sample_grid,
)
from diffusion.train_state import (
    OPTIMIZATION_FILE,
    TrainingObjects,
    finish_interrupted_save,
    has_checkpoint,
    load_training_state,
    save_training_state,
)
from models.autoencoder.vqgan import load_vq_decoder, load_vq_encoder
from utils.checkpoint import CheckpointError
from utils.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
)
from utils.metrics_log import MetricsLog
from utils.rng import seed_everything
from utils.settings import Choice, Number, check_settings

logger = logging.getLogger(__name__)

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
STEPS = 10**9  # upper bound of step counts: far above any run, below what a typo like 1e12 asks for

#: What ``train`` checks before any work (issue 12: no run may start on a setting it cannot honour).
SETTINGS = (
    Choice("latent_diffusion", (True, False)),
    Number("constants.seed", low=0, integer=True),
    Number("constants.image_size", low=8, high=4096, integer=True),
    Number("constants.input_channels", low=1, high=64, integer=True),
    Number("constants.context_dim", low=1, high=8192, integer=True),
    Number("diffusion.T", low=1, high=100_000, integer=True),
    Number("model.context_dropout_probability", low=0, high=1),
    Choice("training.precision", (16, 32)),
    Choice("training.amp_dtype", tuple(AMP_DTYPES)),
    Number("training.batch_size", low=1, high=65_536, integer=True),
    Number("training.num_workers", low=0, high=256, integer=True),
    Number("training.steps", low=1, high=STEPS, integer=True),
    Number("training.steps_between_sampling", low=1, high=STEPS, integer=True),
    Number("training.steps_between_eval", low=1, high=STEPS, integer=True),
    Number("training.steps_between_logging", low=1, high=STEPS, integer=True),
    Number("training.steps_of_checkpoints", low=1, high=STEPS, integer=True, each=True),
    Number("training.context_dropout", low=0, high=1),
    Number("training.flip_probability", low=0, high=1),
    Number("training.grad_clip", low=0, low_open=True, optional=True),
    Number("training.ema.inv_gamma", low=0, low_open=True),
    Number("training.ema.power", low=0, low_open=True),
    Number("training.ema.min_value", low=0, high=1),
    Number("training.ema.max_value", low=0, high=1),
    Number("training.optimizer.lr", low=0, low_open=True),
    Number("training.latent_cache.batch_size", low=1, high=65_536, integer=True),
    Number("training.sampling.steps", low=1, high=100_000, integer=True),
    Number("training.sampling.n_per_row", low=1, high=64, integer=True),
    Number("training.sampling.clip_x0", low=0, low_open=True, optional=True),
)


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, inconsistent configuration)."""


def _resolve_run_dir(run_dir: str | os.PathLike | None, ctx: DistributedContext) -> Path:
    """The run folder: the argument, else Hydra's output dir; rank 0's choice wins under DDP."""
    if run_dir is None:
        if not HydraConfig.initialized():
            raise TrainingError("train(cfg) outside `python main.py` needs run_dir= (the folder to write the run to)")
        run_dir = HydraConfig.get().runtime.output_dir
    return Path(broadcast_object(str(run_dir), ctx))


def _restore_source(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The run folder to resume from, per ``training.checkpoint.restore`` (bool or folder) and ``.path``."""
    restore, path = cfg.training.checkpoint.restore, cfg.training.checkpoint.path
    if restore is None or restore is False or str(restore).lower() == "false":
        if has_checkpoint(run_dir):  # a fresh start would overwrite that run's checkpoints and metrics
            raise CheckpointError(
                f"{run_dir / 'checkpoints'} already holds a training checkpoint; continue that run with "
                "training.checkpoint.restore=true, or start a new run in another hydra.run.dir"
            )
        return None
    source = Path(path) if path else run_dir
    if isinstance(restore, str) and restore.lower() != "true":
        source = Path(restore)
    if not has_checkpoint(source):
        raise CheckpointError(
            f"training.checkpoint.restore: {source / 'checkpoints' / OPTIMIZATION_FILE} does not exist; expected the run "
            "folder of an earlier `python main.py` (pass it as training.checkpoint.restore=<run folder> or resume in "
            "place with hydra.run.dir=<run folder> training.checkpoint.restore=true)"
        )
    return source


def _amp_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``training.amp_dtype`` for precision 16 on CUDA, None (fp32) otherwise."""
    precision = int(cfg.training.precision)
    if precision not in (16, 32):
        raise TrainingError(f"training.precision must be 16 or 32, found {precision}")
    if cfg.training.amp_dtype not in AMP_DTYPES:
        raise TrainingError(f"training.amp_dtype must be one of {sorted(AMP_DTYPES)}, found {cfg.training.amp_dtype!r}")
    if precision == 32 or device.type != "cuda":
        if precision == 16:
            logger.info("precision 16 is for CUDA; training in float32 on %s", device)
        return None
    return AMP_DTYPES[cfg.training.amp_dtype]


def _sample_size(cfg: DictConfig) -> tuple[int, int, int]:
    """(C, h, w) of the diffusion space: VQ latents (f = 2^(levels-1)) or the images."""
    size = int(cfg.constants.image_size)
    if not cfg.latent_diffusion:
        return 3, size, size
    f = 2 ** (len(cfg.autoencoder.ddconfig.ch_mult) - 1)
    return int(cfg.autoencoder.embed_dim), size // f, size // f


def _build_dataset(cfg: DictConfig) -> FaceEmbeddingDataset:
    """``instantiate(cfg.dataset)``, re-raising the dataset's own one-line error instead of Hydra's wrapper."""
    check_data_paths(cfg.dataset.images_root, cfg.dataset.embeddings_file)
    try:
        return instantiate(cfg.dataset)
    except InstantiationException as err:
        if isinstance(err.__cause__, DatasetError):
            raise err.__cause__ from None
        raise


def _write_config(cfg: DictConfig, run_dir: Path) -> None:
    """``<run>/.hydra/config.yaml``: the resolved config, enough to rebuild the model and sample."""
    path = run_dir / ".hydra" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """Train the diffusion model described by ``cfg`` (``configs/train_config.yaml``); returns the run folder.

    Raises:
        DatasetError: data missing or inconsistent (message says which path and how to fill it).
        CheckpointError: VQ weights or the checkpoint to restore are missing or do not fit.
        TrainingError: the loss became NaN/inf (after saving a checkpoint) or the config is inconsistent.
        SettingError: a setting is out of range (:data:`SETTINGS`).
    """
    check_settings(cfg, SETTINGS)
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, _resolve_run_dir(run_dir, ctx))
    finally:
        cleanup_distributed()


def _train(cfg: DictConfig, ctx: DistributedContext, run_dir: Path) -> Path:
    tcfg, seed, device = cfg.training, int(cfg.constants.seed), ctx.device
    dataset = _build_dataset(cfg)
    if cfg.model.is_context_conditional and dataset.context_dim != int(cfg.model.context_input_channels):
        raise DatasetError(
            f"{cfg.dataset.embeddings_file} holds {dataset.context_dim}-d embeddings but the model expects "
            f"model.context_input_channels={cfg.model.context_input_channels}; set constants.context_dim={dataset.context_dim}"
        )
    if ctx.is_main:  # a checkpoint write killed after its commit is completed before anyone reads the folder
        finish_interrupted_save(run_dir)
    barrier(ctx)
    source = _restore_source(cfg, run_dir)
    amp_dtype = _amp_dtype(cfg, device)

    torch.manual_seed(seed)
    model: DenoisingDiffusionProbabilisticModel = instantiate(cfg.diffusion).to(device)
    model.eps_model.use_checkpoint = bool(tcfg.gradient_checkpointing)
    encoder = decoder = None
    if cfg.latent_diffusion:
        ae = cfg.autoencoder
        encoder = load_vq_encoder(cfg.paths.vq_encoder, ae.ddconfig, device, embed_dim=ae.embed_dim)
        if ctx.is_main:
            decoder = load_vq_decoder(cfg.paths.vq_decoder, ae.ddconfig, device, ae.embed_dim, ae.n_embed)

    sampler = StepBatchSampler(len(dataset), int(tcfg.batch_size), seed, float(tcfg.flip_probability),
                               rank=ctx.rank, world_size=ctx.world_size)
    data_order = {"seed": seed, "n_items": len(dataset), "global_batch": sampler.global_batch}
    cache = None
    if encoder is not None and tcfg.latent_cache.enabled:
        fingerprint = cache_fingerprint(dataset, cfg.paths.vq_encoder, cfg.autoencoder.ddconfig)
        cache = LatentCache.load_or_build(tcfg.latent_cache.path, dataset, encoder, fingerprint, ctx,
                                          int(tcfg.latent_cache.batch_size))
        encoder = None  # no longer needed: free its memory

    optimizer = instantiate(tcfg.optimizer)(params=model.parameters())
    lr_scheduler = instantiate(tcfg.lr_scheduler)(optimizer=optimizer) if tcfg.lr_scheduler is not None else None
    grad_scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = instantiate(tcfg.ema)(model=model)
    objects = TrainingObjects(model, ema, optimizer, lr_scheduler, grad_scaler)

    seed_everything(seed + ctx.rank)  # CPD dropout draws: one stream per rank
    start_step = 0
    if source is not None:
        start_step, _ = load_training_state(source, objects, data_order, ctx)
    if ctx.is_main:
        _write_config(cfg, run_dir)
    metrics = MetricsLog(run_dir / METRICS_FILE) if ctx.is_main else None
    if metrics is not None:
        metrics.truncate(start_step if source is not None else None)
    ddp_model = model
    if ctx.is_distributed:
        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=bool(cfg.model.get("learn_empty_context", False)),
        )

    sampler.start_step = start_step
    if cache is None:
        batches = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=int(tcfg.num_workers),
                                  pin_memory=bool(tcfg.pin_memory) and device.type == "cuda",
                                  persistent_workers=int(tcfg.num_workers) > 0,
                                  generator=torch.Generator().manual_seed(seed)))  # keeps the global RNG untouched
    size = _sample_size(cfg)
    n_vis = min(int(tcfg.sampling.n_per_row), len(dataset))
    vis_images = torch.stack([dataset.load(i, False) for i in range(n_vis)])
    vis_contexts = dataset.contexts[:n_vis] if cfg.model.is_context_conditional else None
    steps, p_drop = int(tcfg.steps), float(tcfg.context_dropout)
    sl = slice(ctx.rank * sampler.batch_size, (ctx.rank + 1) * sampler.batch_size)
    window: list[float] = []
    t_window = time.perf_counter()

    def write_samples(step: int) -> None:
        save_sample_grid(ema.averaged_model, run_dir / "samples" / f"sample_{step:06d}.png", size, vis_contexts,
                         vis_images, decoder, tcfg.sampling.sampler, int(tcfg.sampling.steps), seed, amp_dtype,
                         tcfg.sampling.clip_x0)

    logger.info("training steps %d..%d: global batch %d (%d x %d processes) on %s, %s, run folder %s",
                start_step, steps, sampler.global_batch, sampler.batch_size, ctx.world_size, device,
                "latent cache" if cache is not None else ("VQ latents on the fly" if cfg.latent_diffusion else "pixels"),
                run_dir)
    progress = tqdm(range(start_step, steps), initial=start_step, total=steps, disable=not ctx.is_main, desc="train")
    for step in progress:
        model.train()
        if cache is not None:
            indices, flips = sampler.global_batch_at(step)
            x0 = cache.batch(indices[sl], flips[sl]).to(device, non_blocking=True)
            context = dataset.contexts[indices[sl]].to(device, non_blocking=True)
        else:
            x, context = (v.to(device, non_blocking=True) for v in next(batches))
            if encoder is not None:
                with torch.no_grad():
                    x0 = encoder(x)
            else:
                x0 = x
        g = step_generator(seed, step)
        t = torch.randint(0, model.T, (sampler.global_batch,), generator=g)[sl].to(device)
        eps = torch.randn((sampler.global_batch, *x0.shape[1:]), generator=g)[sl].to(device)
        dropout_mask = (torch.rand(sampler.global_batch, generator=g) < p_drop)[sl].to(device) if p_drop > 0 else None
        if not cfg.model.is_context_conditional:
            context = dropout_mask = None

        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = ddp_model(x0, context=context, dropout_mask=dropout_mask, t=t, eps=eps)
        optimizer.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        loss_value = all_reduce_mean(loss.detach().float(), ctx).item()
        if not math.isfinite(loss_value):
            save_training_state(run_dir, objects, step, sampler.epoch_of(step), data_order, ctx)
            raise TrainingError(
                f"loss became {loss_value} at step {step}; saved the last finite state (step {step}) to "
                f"{run_dir / 'checkpoints'}. Resume with training.checkpoint.restore={run_dir} after lowering "
                "training.optimizer.lr or setting training.grad_clip"
            )
        if tcfg.grad_clip is not None:
            grad_scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg.grad_clip))
        grad_scaler.step(optimizer)
        grad_scaler.update()
        if lr_scheduler is not None:
            lr_scheduler.step()
        decay = ema.step(model)
        global_step = step + 1
        window.append(loss_value)

        if global_step % int(tcfg.steps_between_logging) == 0 or global_step == steps:
            if ctx.is_main:
                elapsed = time.perf_counter() - t_window
                metrics.append({
                    "step": global_step, "epoch": sampler.epoch_of(step), "loss": sum(window) / len(window),
                    "lr": optimizer.param_groups[0]["lr"], "ema_decay": decay,
                    "images_per_s": len(window) * sampler.global_batch / max(elapsed, 1e-9),
                })
                progress.set_postfix(loss=f"{sum(window) / len(window):.4f}")
            window, t_window = [], time.perf_counter()
        if global_step % int(tcfg.steps_between_eval) == 0 or global_step == steps:
            save_training_state(run_dir, objects, global_step, sampler.epoch_of(global_step), data_order, ctx,
                                tcfg.steps_of_checkpoints or ())
            if ctx.is_main:
                plot_loss(metrics.rows(), run_dir / LOSS_PLOT_FILE)
        if ctx.is_main and (global_step % int(tcfg.steps_between_sampling) == 0 or global_step == steps):
            write_samples(global_step)
    if ctx.is_main and start_step >= steps:  # resumed after a kill inside the last checkpoint write: finish its outputs
        plot_loss(metrics.rows(), run_dir / LOSS_PLOT_FILE)
        write_samples(start_step)
    logger.info("finished %d steps; run folder %s", steps, run_dir)
    return run_dir
