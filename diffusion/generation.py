"""Generate a synthetic identity dataset from a trained run: load, pack, sample, decode, write, resume.

Reproducibility: every image ``k`` of identity ``name`` draws its x_T and every noise term from its
own CPU generator seeded by ``(seed, name, k)`` (:func:`image_seed`), so an image does not depend on
which other images share its batch, on their order or on the number of processes. The eps model and
the decoder are always called on micro-batches of exactly ``micro_batch`` rows (the last one padded),
because CPU kernels pick different reduction orders for different batch sizes (batch 1 vs 8 differ
by ~1e-7 on the CPU); with a fixed row count the rows are bitwise independent of ``batch_size``.
Changing ``micro_batch``, the device or the number of threads may change the last bits.

Resume: an identity (a shard file for aligned outputs, :mod:`diffusion.streaming`) is done when its
final file exists. Files are written under a temporary name and renamed, so a killed run leaves
either nothing or a complete file, and a restart redoes only the rest. The output folder records
what determines its images (:mod:`diffusion.fingerprint`): a rerun with other settings is refused.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from contexts.sources import load_contexts
from diffusion.ddpm import DenoisingDiffusionProbabilisticModel, load_diffusion_checkpoint
from diffusion.fingerprint import claim_folder, sampling_fingerprint
from diffusion.guidance import negative_contexts
from diffusion.samplers import EpsFn, guided_eps, per_sample_noise, sample_loop
from diffusion.sampling_settings import SamplerSettings
from diffusion.streaming import (
    ALIGNED_OUTPUTS,
    SAMPLE_OUTPUTS,
    AlignSettings,
    BlockWriter,
    ShardSettings,
    ShardStream,
)
from diffusion.train_state import build_diffusion_model
from models.autoencoder.vqgan import VQ_F4_EMBED_DIM, VQ_F4_N_EMBED, VQDecoderInterface, load_vq_decoder
from utils.atomic import write_text_atomic
from utils.checkpoint import CheckpointError
from utils.config import CONFIG_DIR, resolve_device
from utils.distributed import resolve_task
from utils.names import check_names

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A run folder loaded for sampling.

    ``latent_size`` is the (C, h, w) the diffusion model works in (the VQ latent, or the image
    itself when ``decoder`` is None); ``context_dim`` the identity-context size D it expects.
    """

    diffusion: DenoisingDiffusionProbabilisticModel
    decoder: VQDecoderInterface | None
    latent_size: tuple[int, int, int]
    context_dim: int
    name: str
    checkpoint: Path


def checkpoint_path(run_dir: Path, checkpoint: str | int) -> Path:
    """``ema`` -> ema_averaged_model.ckpt, ``raw`` -> model.ckpt, a step -> ema_averaged_model_<step>.ckpt."""
    name = str(checkpoint)
    if name == "ema":
        return run_dir / "checkpoints" / "ema_averaged_model.ckpt"
    if name == "raw":
        return run_dir / "checkpoints" / "model.ckpt"
    if name.isdigit():
        return run_dir / "checkpoints" / f"ema_averaged_model_{name}.ckpt"
    raise ValueError(f"checkpoint.which must be 'ema', 'raw' or a training step such as 100000, found {checkpoint!r}")


def load_trained_model(
    run_dir: str | os.PathLike,
    checkpoint: str | int = "ema",
    device: str | torch.device = "cpu",
    vq_decoder_path: str | os.PathLike | None = None,
) -> TrainedModel:
    """Rebuild the DDPM of a run folder (ours or a published ``trained_models/<name>/``) and load it strictly.

    The run folder holds ``.hydra/config.yaml`` (the training config) and ``checkpoints/*.ckpt``.
    Latent runs also need the VQ decoder: its ``ddconfig`` comes from the run's ``autoencoder`` key,
    else from ``configs/autoencoder/vq_f4.yaml`` (published runs have no such key).
    """
    run_dir = Path(run_dir)
    config_file = run_dir / ".hydra" / "config.yaml"
    if not run_dir.is_dir():
        raise CheckpointError(f"checkpoint.path {run_dir} is not a folder; expected a training run folder "
                              "with .hydra/config.yaml and checkpoints/ (e.g. trained_models/<name>)")
    if not config_file.is_file():
        raise CheckpointError(f"{config_file} does not exist; checkpoint.path must be a training run folder")
    train_cfg = OmegaConf.load(config_file)
    path = checkpoint_path(run_dir, checkpoint)
    if not path.parent.is_dir():
        raise CheckpointError(f"{path.parent} does not exist; the run folder {run_dir} has no checkpoints/ folder")
    device = torch.device(device)
    diffusion = build_diffusion_model(train_cfg, config_file).to(device)
    load_diffusion_checkpoint(diffusion, path, map_location=device)
    diffusion.eval().requires_grad_(False)

    constants = train_cfg.constants
    context_dim = OmegaConf.select(train_cfg, "constants.context_dim", default=None)
    if context_dim is None:
        context_dim = train_cfg.model.context_input_channels
    channels, image_size = int(constants.input_channels), int(constants.image_size)
    decoder = None
    latent_size = (channels, image_size, image_size)
    if train_cfg.get("latent_diffusion", False):
        autoencoder = train_cfg.get("autoencoder") or OmegaConf.load(CONFIG_DIR / "autoencoder" / "vq_f4.yaml")
        factor = 2 ** (len(autoencoder.ddconfig.ch_mult) - 1)
        latent_size = (channels, image_size // factor, image_size // factor)
        if vq_decoder_path is None:
            raise ValueError(f"{config_file} is a latent-diffusion run: pass the VQ decoder file (paths.vq_decoder)")
        decoder = load_vq_decoder(
            vq_decoder_path, OmegaConf.to_container(autoencoder.ddconfig), map_location=device,
            embed_dim=int(autoencoder.get("embed_dim", VQ_F4_EMBED_DIM)), n_embed=int(autoencoder.get("n_embed", VQ_F4_N_EMBED)),
        )
    log.info("loaded %s (%s), latent %s, context dim %d", run_dir.name, path.name, latent_size, context_dim)
    return TrainedModel(diffusion, decoder, latent_size, int(context_dim), run_dir.name, path)


class MicroBatched(nn.Module):
    """Call ``module`` on chunks of exactly ``micro_batch`` rows (the last padded by repeating its last row).

    All positional tensor arguments are split along dim 0; None arguments pass through.
    """

    def __init__(self, module: nn.Module, micro_batch: int) -> None:
        super().__init__()
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, found {micro_batch}")
        self.module = module
        self.micro_batch = int(micro_batch)

    def forward(self, x: torch.Tensor, *args: torch.Tensor | None) -> torch.Tensor:
        """x: (B, ...) -> module output (B, ...), computed ``micro_batch`` rows at a time."""
        m, outputs = self.micro_batch, []
        for start in range(0, len(x), m):
            n = min(m, len(x) - start)
            parts = [None if a is None else _pad_rows(a[start : start + n], m) for a in (x, *args)]
            outputs.append(self.module(*parts)[:n])
        return torch.cat(outputs)


def _pad_rows(a: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad (n, ...) to (rows, ...) by repeating the last row."""
    return a if len(a) == rows else torch.cat([a, a[-1:].expand(rows - len(a), *a.shape[1:])])


def image_seed(seed: int, identity: str, k: int) -> int:
    """The seed of image ``k`` of ``identity``: a hash of both and the run seed, in [0, 2**63)."""
    digest = hashlib.sha256(f"{seed}:{identity}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounding like ``torchvision.utils.save_image``."""
    x = ((x.float().clamp(-1, 1) + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def guided_eps_fn(model: TrainedModel, context: torch.Tensor, settings: SamplerSettings,
                  negative_context: torch.Tensor | None = None) -> EpsFn:
    """``eps_fn(x_t, t)`` for :func:`diffusion.samplers.sample_loop`: the eps model in micro-batches,
    with guidance and autocast as ``settings`` say.

    Args:
        context: (B, D) identity contexts; negative_context: (B, D), required when ``settings.negative``
            is active (a mode and a non-zero scale) and unused otherwise.
    """
    device = model.diffusion.betas.device
    eps_model = MicroBatched(model.diffusion.eps_model, settings.micro_batch)
    context = context.to(device)
    scale = settings.negative.scale if settings.negative.active else 0.0
    if scale != 0.0:
        found = None if negative_context is None else tuple(negative_context.shape)
        if found != tuple(context.shape):
            raise ValueError(f"sampling.negative.mode={settings.negative.mode} needs negative_context of shape "
                             f"{tuple(context.shape)}, found {found}")
        negative_context = negative_context.to(device)
    amp_dtype = settings.amp_dtype

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if amp_dtype is not None and not torch.is_autocast_enabled(device.type):
                raise ValueError(f"sampling.amp={settings.amp} is not supported on {device.type} by torch "
                                 f"{torch.__version__}; use bfloat16 or null")
            return guided_eps(eps_model, x_t, t, context, settings.guidance_scale, negative_context, scale)

    return eps_fn


@torch.no_grad()
def sample_images(
    model: TrainedModel,
    context: torch.Tensor,
    seeds: Sequence[int],
    settings: SamplerSettings | None = None,
    negative_context: torch.Tensor | None = None,
) -> np.ndarray:
    """Sample and decode one image per row of ``context`` (B, D), row b seeded by ``seeds[b]``.

    ``negative_context`` (B, D): see :func:`guided_eps_fn`.

    Returns:
        (B, H, W, 3) uint8 images.
    """
    settings = settings or SamplerSettings()
    device = model.diffusion.betas.device
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x_T = per_sample_noise(generators, model.latent_size, device)
    eps_fn = guided_eps_fn(model, context, settings, negative_context)
    x_0 = sample_loop(eps_fn, settings.build_sampler(model.diffusion), x_T,
                      lambda x: per_sample_noise(generators, model.latent_size, device))
    if model.decoder is not None:
        x_0 = MicroBatched(model.decoder, settings.micro_batch)(x_0)
    return to_uint8(x_0)


@dataclass
class GenerationSummary:
    """What one process did; ``export`` is the dataset summary once a sharded output is complete."""

    shard: tuple[int, int]
    identities: int
    skipped: int
    written: int
    images: int
    seconds: float
    export: dict | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def sample_identities(
    model: TrainedModel,
    contexts: np.ndarray,
    rows: Sequence[int],
    seeds: Callable[[int, int], int],
    n_images: int,
    settings: SamplerSettings,
    batch_size: int,
    negatives: np.ndarray | None = None,
    desc: str = "sampling",
) -> Iterator[tuple[int, np.ndarray]]:
    """Sample ``n_images`` per row of ``rows``, packed into batches of ``batch_size`` across identities.

    Args:
        contexts: (N, D) float32; rows: the rows to sample, in the order they are yielded.
        seeds: ``seeds(row, k)``, the seed of image k of a row (:func:`image_seed` of its name).
        negatives: (len(rows), D) negative contexts when ``settings.negative`` is active.
    Yields:
        ``(row, images (n_images, H, W, 3) uint8)`` for each row, in order, as soon as its images exist.
    """
    work = [(j, k) for j in range(len(rows)) for k in range(n_images)]
    buffers: dict[int, list[np.ndarray]] = {}
    with tqdm(total=len(work), desc=desc, unit="img") as bar:
        for start in range(0, len(work), batch_size):
            batch = work[start : start + batch_size]
            context = torch.from_numpy(np.stack([contexts[rows[j]] for j, _ in batch]))
            negative = None if negatives is None else torch.from_numpy(np.stack([negatives[j] for j, _ in batch]))
            images = sample_images(model, context, [seeds(rows[j], k) for j, k in batch], settings, negative)
            finished = []
            for (j, _), image in zip(batch, images, strict=True):
                buffers.setdefault(j, []).append(image)
                if len(buffers[j]) == n_images:
                    finished.append((rows[j], np.stack(buffers.pop(j))))
            bar.update(len(batch))
            yield from finished


def generate_into(
    model: TrainedModel,
    names: Sequence[str],
    contexts: np.ndarray,
    sink: BlockWriter | ShardStream,
    n_images: int,
    settings: SamplerSettings | None = None,
    seed: int = 42,
    batch_size: int = 50,
) -> GenerationSummary:
    """Sample ``n_images`` for each identity the ``sink`` still needs and hand them over in its order.

    Args:
        names: N identity names; contexts: (N, D) float32 contexts.
        sink: a :class:`~diffusion.streaming.BlockWriter` or :class:`~diffusion.streaming.ShardStream`.
        settings: how to sample (default: the original's DDPM); with negative guidance, ``close`` and
            ``far`` negatives are chosen among all N contexts.
    """
    settings = settings or SamplerSettings()
    if contexts.shape[1] != model.context_dim:
        raise ValueError(f"contexts have dimension {contexts.shape[1]} but {model.name} expects {model.context_dim}")
    check_names(names, f"identity name for {sink.out_dir}")
    index, count = sink.task
    row_of = {name: i for i, name in enumerate(names)}
    pending = [row_of[name] for name in sink.pending()]
    log.info("shard %d/%d: %d identities, %d already done, %d to sample", index, count, len(sink.mine),
             len(sink.mine) - len(pending), len(pending))
    negatives = None
    if settings.negative.active and pending:
        negatives = negative_contexts(settings.negative, names, contexts, pending, model.diffusion.betas.device)
    start_time = time.perf_counter()
    try:
        for i, images in sample_identities(model, contexts, pending, lambda i, k: image_seed(seed, names[i], k),
                                           n_images, settings, batch_size, negatives, f"sampling shard {index}"):
            sink.add(names[i], images)
        export = sink.finish()
    finally:
        sink.close()
    summary = GenerationSummary((index, count), len(sink.mine), len(sink.mine) - len(pending), len(pending),
                                len(pending) * n_images, time.perf_counter() - start_time, export)
    log.info("shard %d/%d done: %d identities written, %d skipped, %d images in %.1f s (%.3f images/s) -> %s",
             index, count, summary.written, summary.skipped, summary.images, summary.seconds,
             summary.images_per_second, sink.out_dir)
    return summary


def generate_dataset(
    model: TrainedModel,
    names: Sequence[str],
    contexts: np.ndarray,
    out_dir: str | os.PathLike,
    n_images: int,
    settings: SamplerSettings | None = None,
    seed: int = 42,
    batch_size: int = 50,
    output: str = "block",
    shard: tuple[int, int] = (0, 1),
) -> GenerationSummary:
    """Sample ``n_images`` per identity of this shard (identity i belongs to shard ``i % count``) into ``out_dir``.

    Images of several identities are packed into batches of ``batch_size``; an identity is written
    (``<name>.grid<r>x<c>.png`` for ``block``, ``<name>/<k>.png`` for ``files``) once all its images
    exist. See :func:`generate_into` for the other arguments.
    """
    return generate_into(model, names, contexts, BlockWriter(out_dir, names, n_images, output, shard), n_images,
                         settings, seed, batch_size)


def samples_dir(cfg: DictConfig) -> Path:
    """``<sampling.out_dir>/<run name>[_non_ema|_<step>]/<contexts file stem>``, the original's layout."""
    which = str(cfg.checkpoint.which)
    model_name = Path(cfg.checkpoint.path).name + {"ema": "", "raw": "_non_ema"}.get(which, f"_{which}")
    return Path(cfg.sampling.out_dir) / model_name / Path(cfg.sampling.contexts_file).stem


def sample_from_config(cfg: DictConfig) -> GenerationSummary:
    """``sample.py``: check the settings, load the run and the contexts, claim the output folder, then sample
    this process's identities into blocks / files (:class:`BlockWriter`) or aligned shards (:class:`ShardStream`)."""
    s = cfg.sampling
    settings = SamplerSettings.from_config(s)
    task = resolve_task(s.shard_index, s.num_shards, "sampling")
    if s.output not in SAMPLE_OUTPUTS + ALIGNED_OUTPUTS:
        raise ValueError(f"sampling.output must be one of {SAMPLE_OUTPUTS + ALIGNED_OUTPUTS}, found {s.output!r}")
    aligned = s.output in ALIGNED_OUTPUTS
    align, shards = (AlignSettings.from_config(s.align), ShardSettings.from_config(s)) if aligned else (None, None)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    contexts = load_contexts(s.contexts_file)
    n_contexts = len(contexts) if s.n_contexts is None else int(s.n_contexts)
    if n_contexts > len(contexts):
        raise ValueError(f"{s.contexts_file} holds {len(contexts)} contexts, fewer than sampling.n_contexts={n_contexts}")
    check_names(contexts.names[:n_contexts], f"identity name in {s.contexts_file}")
    model = load_trained_model(cfg.checkpoint.path, cfg.checkpoint.which, device, cfg.paths.vq_decoder)
    if contexts.dim != model.context_dim:
        raise ValueError(f"{s.contexts_file} holds {contexts.dim}-d contexts but the model in {cfg.checkpoint.path} "
                         f"expects {model.context_dim}-d ones (constants.context_dim / model.context_input_channels)")
    out_dir = samples_dir(cfg)
    extra = {"align": asdict(align), "shards": shards.fingerprint()} if aligned else {}
    claim_folder(out_dir, sampling_fingerprint(
        model.checkpoint, s.contexts_file, n_contexts, s.seed, s.n_samples_per_context, settings, s.output,
        None if model.decoder is None else cfg.paths.vq_decoder, extra))
    if task[0] == 0:
        write_text_atomic(out_dir.parent / f"{out_dir.name}.yaml", OmegaConf.to_yaml(cfg))
    names, embeddings = contexts.names[:n_contexts], contexts.embeddings[:n_contexts]
    n_images = int(s.n_samples_per_context)
    if aligned:
        sink = ShardStream(out_dir, names, task, shards, align, align.build_aligner(device))
    else:
        sink = BlockWriter(out_dir, names, n_images, s.output, task)
    return generate_into(model, names, embeddings, sink, n_images, settings, int(s.seed), int(s.batch_size))
