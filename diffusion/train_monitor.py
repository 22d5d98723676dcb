"""What a training run shows while it runs (rank 0): the loss plot and sample grids."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torchvision.utils import make_grid, save_image

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"


def plot_loss(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Loss against step (log scale) of ``metrics.jsonl`` rows, as a PNG."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (MSE on eps)")
    if rows and min(r["loss"] for r in rows) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def _generators(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


@torch.no_grad()
def save_sample_grid(
    model: DenoisingDiffusionProbabilisticModel,
    path: str | os.PathLike,
    size: tuple[int, int, int],
    contexts: torch.Tensor | None,
    real_images: torch.Tensor,
    decoder: nn.Module | None = None,
    sampler: str = "ddim",
    steps: int = 25,
    seed: int = 0,
    amp_dtype: torch.dtype | None = None,
    clip_x0: float | None = None,
) -> Path:
    """Write a grid of samples of ``model`` (usually the EMA copy) to ``path``.

    Rows: samples for the given contexts; the first context with ``n`` noises (identity consistency);
    random unit-norm (synthetic) contexts; the real images. Without contexts: two rows of
    unconditional samples and the real images. Sampling draws from per-sample generators inside
    ``fork_rng``, so it never changes the training RNG streams.

    Args:
        size: (C, h, w) of the diffusion space (latent or image).
        contexts: (n, D) identity embeddings of ``real_images``, or None for an unconditional model.
        real_images: (n, 3, H, W) in [-1, 1].
        decoder: VQ decoder for latent diffusion (samples are decoded in chunks of n), else None.
        clip_x0: clip the x0 estimate each step (pixel space: 1.0; None for latents, as the original).
    """
    n = real_images.shape[0]
    device = model.betas.device
    if contexts is not None:
        g = torch.Generator().manual_seed(seed)
        synthetic = F.normalize(torch.randn(contexts.shape, generator=g), dim=1)
        blocks = [contexts, contexts[:1].expand(n, -1), synthetic]
    else:
        blocks = [None, None]
    rows = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for b, context in enumerate(blocks):
            x = model.sample(n, size, context=None if context is None else context.to(device), sampler=sampler,
                             steps=steps, generators=_generators(seed + b, n), amp_dtype=amp_dtype,
                             clip_x0=clip_x0)
            if decoder is not None:
                x = decoder(x.to(next(decoder.parameters()).device))
            rows.append(x.float().cpu())
    rows.append(real_images.float().cpu())
    grid = make_grid(((torch.cat(rows) + 1) / 2).clamp(0, 1), nrow=n, padding=2, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    logger.info("wrote sample grid %s", path)
    return path
