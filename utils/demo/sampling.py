"""Pixel-space sampling for the demo: DDIM with the x0 estimate clipped to the image range.

The project's samplers follow the original latent-space IDiff-Face and never clip: VQ latents have no
fixed range. In pixel space the estimate ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` of a small,
briefly trained model is amplified up to ``1 / sqrt(a_T) ~ 160`` times at high noise, the samples
drift out of [-1, 1] and saturate to flat colours. Clipping x0 to [-1, 1] before each step (Ho et
al.'s ``clip_denoised``) keeps them on the data range. :func:`load_pixel_model` rebuilds a pixel-space
run with such a sampler, for :func:`diffusion.generation.generate_dataset`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel, load_diffusion_checkpoint
from diffusion.generation import TrainedModel, checkpoint_path
from diffusion.samplers import DDIMSampler, DDPMSampler


class ClippedDDIMSampler(DDIMSampler):
    """DDIM (eq. 12) whose x0 estimate is clipped to [-1, 1]; eps is recomputed to match the clipped x0."""

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One step from ``t`` to the previous visited timestep. eps, x_t: (B, 3, H, W) images in [-1, 1] scale."""
        a_t = self.alpha_bars[t]
        x0 = ((x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1.0, 1.0)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return super().step(eps, t, x_t, noise)


class ClippedPixelDiffusion(DenoisingDiffusionProbabilisticModel):
    """The DDPM of a pixel-space run whose ``ddim`` sampler clips x0 (same buffers and weights)."""

    def sampler(self, name: str = "ddim", steps: int | None = None, eta: float = 0.0) -> DDPMSampler | DDIMSampler:
        """``ddim`` with x0 clipping; other samplers are refused (the demo samples with DDIM only)."""
        if name != "ddim":
            raise ValueError(f"the demo's pixel-space sampling supports sampler 'ddim' only, found {name!r}")
        return ClippedDDIMSampler.from_model(self, steps or self.T, eta)


def load_pixel_model(run_dir: str | os.PathLike, which: str = "ema", device: str | torch.device = "cpu") -> TrainedModel:
    """Load a pixel-space run folder (``latent_diffusion: false``) as a :class:`TrainedModel` with clipped DDIM.

    Args:
        run_dir: run folder of ``python main.py`` (``.hydra/config.yaml`` + ``checkpoints/``).
        which: ``ema``, ``raw`` or a step, as ``checkpoint.which`` of ``sample.py``.
    """
    run_dir = Path(run_dir)
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} does not exist; expected the run folder of `python main.py experiment=demo`")
    cfg = OmegaConf.load(config_file)
    if cfg.get("latent_diffusion", True):
        raise ValueError(f"{config_file}: latent_diffusion is true; clipped pixel sampling needs a pixel-space run")
    cfg.diffusion._target_ = f"{__name__}.{ClippedPixelDiffusion.__name__}"
    device = torch.device(device)
    diffusion = instantiate(cfg.diffusion).to(device)
    path = checkpoint_path(run_dir, which)
    load_diffusion_checkpoint(diffusion, path, map_location=device)
    diffusion.eval().requires_grad_(False)
    size = int(cfg.constants.image_size)
    return TrainedModel(diffusion, None, (int(cfg.constants.input_channels), size, size),
                        int(cfg.constants.context_dim), run_dir.name, path)
