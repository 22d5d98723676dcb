"""What a training run shows while it runs (rank 0): metrics log, loss plot and sample grids."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel  # noqa: E402

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"


class MetricsLog:
    """``<run>/metrics.jsonl``: one JSON object per logging interval (step, epoch, loss, lr, images/s, ...).

    On resume, rows after the restored step are dropped so the log reads like an uninterrupted run.
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.is_file():
            rows = [r for r in self.rows() if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif resume_step is None:
            self.path.unlink(missing_ok=True)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (flushed at once, so a killed run keeps its log)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(row)) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        """All rows written so far."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self, path: str | os.PathLike | None = None) -> Path:
        """Loss against step (log scale) as a PNG, by default ``<run>/loss.png``."""
        path = Path(path) if path is not None else self.path.with_name(LOSS_PLOT_FILE)
        rows = self.rows()
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (MSE on eps)")
        if rows and min(r["loss"] for r in rows) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


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
