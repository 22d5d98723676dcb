"""The DDPM wrapper of IDiff-Face: schedule buffers + eps model, training loss, sampling.

Its ``state_dict`` is the published checkpoint layout: the 8 schedule buffers without a
prefix, then the UNet under ``eps_model.``. Construct it from a config exactly as the
original (``_target_: diffusion.ddpm.DenoisingDiffusionProbabilisticModel``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from diffusion.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    Sampler,
    guided_eps,
    per_sample_noise,
    sample_loop,
)
from diffusion.schedules import SCHEDULE_BUFFERS, compute_beta_schedule, schedule_constants
from utils.checkpoint import load_checkpoint


class DenoisingDiffusionProbabilisticModel(nn.Module):
    """Gaussian diffusion with an epsilon-predicting model (Ho et al. 2020).

    Args:
        eps_model: ``eps_model(x_t, t, context, dropout_mask) -> eps`` (the ConditionalUNet).
        T: number of diffusion steps; ``t`` is the 0-based index 0..T-1.
        criterion: loss between true and predicted noise (MSE in the paper).
        schedule_type: ``linear``, ``cosine`` or ``cosine_warped``.
        schedule_k, schedule_beta_min, schedule_beta_max: cosine-schedule knobs of the original.
    """

    def __init__(
        self,
        eps_model: nn.Module,
        T: int = 1000,
        criterion: nn.Module | None = None,
        schedule_type: str = "linear",
        schedule_k: float | None = 1.0,
        schedule_beta_min: float | None = 0.0,
        schedule_beta_max: float | None = 0.1,
    ) -> None:
        super().__init__()
        self.eps_model = eps_model
        self.T = int(T)
        self.criterion = criterion if criterion is not None else nn.MSELoss()
        self.schedule_type = schedule_type
        betas = compute_beta_schedule(self.T, schedule_type, schedule_k, schedule_beta_min, schedule_beta_max)
        for name, value in schedule_constants(betas).items():
            self.register_buffer(name, value)

    def _at(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Schedule array ``name`` at timesteps t (B,), shaped (B, 1, 1, 1) for broadcasting."""
        return getattr(self, name)[t].view(-1, 1, 1, 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``; x0, eps (B, C, H, W), t (B,) int64."""
        return self._at("sqrt_alpha_bars", t) * x0 + self._at("sqrt_one_minus_alpha_bars", t) * eps

    def forward(
        self,
        x0: torch.Tensor,
        context: torch.Tensor | None = None,
        dropout_mask: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training loss ``criterion(eps, eps_model(x_t, t, context, dropout_mask))``.

        Args:
            x0: clean samples (B, C, H, W) (VQ latents or images in [-1, 1]).
            context: identity embeddings (B, D) or None.
            dropout_mask: (B,) bool, True = that sample is trained with the empty context.
            t, eps: optional fixed timesteps (B,) and noise; drawn uniformly / from N(0, I) if omitted.
        """
        if t is None:
            t = torch.randint(0, self.T, (x0.shape[0],), device=x0.device)
        if eps is None:
            eps = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, eps)
        return self.criterion(eps, self.eps_model(x_t, t, context, dropout_mask))

    def sampler(self, name: str = "ddpm", steps: int | None = None, eta: float = 0.0, clip_x0: float | None = None,
                timestep_spacing: str = "linspace", timesteps: Sequence[int] | None = None) -> Sampler:
        """``ddpm`` (the original, all T steps), ``ddim`` (with ``eta``) or ``dpmpp_2m`` (DPM-Solver++(2M)).

        ``ddim`` and ``dpmpp_2m`` visit ``steps`` timesteps (default T) spread by ``timestep_spacing``
        (``linspace``, ``leading``, ``trailing``), or exactly the explicit ``timesteps`` (highest first).
        ``clip_x0``: clip the x0 estimate to [-clip_x0, clip_x0] each step (pixel space: 1.0); None = the original.
        """
        if name == "ddpm":
            return DDPMSampler.from_model(self, clip_x0)
        if name == "ddim":
            return DDIMSampler.from_model(self, steps, eta, clip_x0, timestep_spacing, timesteps)
        if name == "dpmpp_2m":
            return DPMSolverPP2MSampler.from_model(self, steps, clip_x0, timestep_spacing, timesteps)
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")

    @torch.no_grad()
    def sample(
        self,
        n_samples: int,
        size: Sequence[int],
        x_T: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        sampler: str = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        generators: Sequence[torch.Generator] | None = None,
        amp_dtype: torch.dtype | None = None,
        progress: bool = False,
        clip_x0: float | None = None,
    ) -> torch.Tensor:
        """Draw ``n_samples`` samples of shape ``size`` (C, H, W) on the device of the buffers.

        Args:
            context: (n_samples, D) identity contexts, or None for unconditional samples.
            generators: one CPU generator per sample for x_T and every noise draw
                (reproducible regardless of batch composition); default: the global RNG.
            amp_dtype: run the eps model under autocast with this dtype (e.g. torch.float16 on CUDA).
            clip_x0: clip the x0 estimate to [-clip_x0, clip_x0] each step (pixel space: 1.0); None = the original.
        Returns:
            x_0 (n_samples, *size) float32.
        """
        device = self.betas.device
        if generators is not None and len(generators) != n_samples:
            raise ValueError(f"got {len(generators)} generators for {n_samples} samples")
        if x_T is None:
            x_T = per_sample_noise(generators, size, device) if generators else torch.randn(n_samples, *size, device=device)
        noise_fn = (lambda x: per_sample_noise(generators, size, device)) if generators else None

        def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                return guided_eps(self.eps_model, x_t, t, context, guidance_scale)

        was_training = self.training
        self.eval()
        try:
            return sample_loop(eps_fn, self.sampler(sampler, steps, eta, clip_x0), x_T, noise_fn, progress=progress)
        finally:
            self.train(was_training)


def load_diffusion_checkpoint(
    model: DenoisingDiffusionProbabilisticModel, path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> DenoisingDiffusionProbabilisticModel:
    """Load an IDiff-Face ``*.ckpt`` (8 schedule buffers + ``eps_model.*``) strictly into ``model``."""
    return load_checkpoint(
        model, path, map_location=map_location,
        source_hint="expected an IDiff-Face checkpoint (e.g. trained_models/<name>/checkpoints/ema_averaged_model.ckpt "
        "from the IDiff-Face release, or checkpoints/ of a run of `python main.py`)",
    )


__all__ = ["DenoisingDiffusionProbabilisticModel", "load_diffusion_checkpoint", "SCHEDULE_BUFFERS"]
