"""Reverse-process samplers over the schedule buffers of :class:`diffusion.ddpm.DenoisingDiffusionProbabilisticModel`.

A sampler holds only schedule arrays and the timesteps it visits; the caller runs the
model and loops ``x = sampler.step(eps, t, x, noise)``. Nothing here picks a device.

* :class:`DDPMSampler`: the original's ancestral update (Algorithm 2 of Ho et al. with
  sigma^2 = beta, noise only for t > 1, exactly as IDiff-Face does).
* :class:`DDIMSampler`: Song et al.'s DDIM over any subsequence of the schedule, with eta.
* Both take ``clip_x0``: ``None`` (the original, right for VQ latents, which have no fixed range) or
  ``c`` to clip the model's estimate of x0 to [-c, c] before each step (Ho et al.'s ``clip_denoised``;
  use 1.0 for pixel-space models, whose estimate ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` is
  amplified up to ``1 / sqrt(a_T)`` times at high noise and otherwise drifts off the image range).
* :func:`guided_eps`: classifier-free guidance, the empty context being the unconditional branch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def clip_eps(eps: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, clip_x0: float | None) -> torch.Tensor:
    """The eps for which x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) equals its clip to [-clip_x0, clip_x0].

    A sampler's update written in eps with this eps is its update written in the clipped x0.
    ``clip_x0=None`` returns ``eps`` unchanged.
    """
    if clip_x0 is None:
        return eps
    if clip_x0 <= 0:
        raise ValueError(f"clip_x0 must be > 0 or None, got {clip_x0}")
    x0 = ((x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).clamp(-clip_x0, clip_x0)
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


class DDPMSampler:
    """Ancestral sampling with the original's update, visiting t = T-1, ..., 0.

    ``x_{t-1} = sqrt_alphas_inv[t] * (x_t - eps * one_minus_alphas_over_sqrt_one_minus_alpha_bars[t]) + sigmas[t] * z``
    with ``z ~ N(0, I)`` for ``t > 1`` and ``z = 0`` for ``t <= 1``: IDiff-Face leaves the last
    *two* steps noise-free, and we keep that so published checkpoints give the same samples.
    With ``clip_x0`` the mean is the posterior mean of q(x_{t-1} | x_t, x0) at the clipped x0
    (``alpha_bars`` is then required).
    """

    def __init__(self, sqrt_alphas_inv: torch.Tensor, one_minus_alphas_over_sqrt_one_minus_alpha_bars: torch.Tensor,
                 sigmas: torch.Tensor, alpha_bars: torch.Tensor | None = None, clip_x0: float | None = None) -> None:
        if clip_x0 is not None and alpha_bars is None:
            raise ValueError("DDPMSampler with clip_x0 needs alpha_bars")
        self.sqrt_alphas_inv = sqrt_alphas_inv
        self.coef_eps = one_minus_alphas_over_sqrt_one_minus_alpha_bars
        self.sigmas = sigmas
        self.alpha_bars = alpha_bars
        self.clip_x0 = clip_x0
        self.timesteps = list(range(len(sigmas) - 1, -1, -1))

    @classmethod
    def from_model(cls, ddpm: nn.Module, clip_x0: float | None = None) -> DDPMSampler:
        return cls(ddpm.sqrt_alphas_inv, ddpm.one_minus_alphas_over_sqrt_one_minus_alpha_bars, ddpm.sigmas,
                   ddpm.alpha_bars, clip_x0)

    @staticmethod
    def needs_noise(t: int) -> bool:
        """Whether step ``t`` adds fresh noise (the original adds none at t = 1 and t = 0)."""
        return t > 1

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One reverse step. ``eps``, ``x_t``, ``noise``: (B, C, H, W); ``noise`` is required when ``needs_noise(t)``."""
        if self.clip_x0 is not None:
            eps = clip_eps(eps, x_t, self.alpha_bars[t], self.clip_x0)
        x_prev = self.sqrt_alphas_inv[t] * (x_t - eps * self.coef_eps[t])
        if self.needs_noise(t):
            if noise is None:
                raise ValueError(f"DDPM step t={t} adds noise: pass noise of shape {tuple(x_t.shape)}")
            x_prev = x_prev + self.sigmas[t] * noise
        return x_prev


def ddim_timesteps(T: int, n_steps: int) -> list[int]:
    """``n_steps`` timesteps spread evenly over [0, T-1], highest first (all of them when n_steps == T)."""
    if not 1 <= n_steps <= T:
        raise ValueError(f"DDIM needs 1 <= steps <= T={T}, got steps={n_steps}")
    return sorted({int(round(v)) for v in np.linspace(0, T - 1, n_steps)}, reverse=True)


class DDIMSampler:
    """DDIM (Song et al. 2021, eq. 12) on a subsequence of the schedule.

    ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``;
    ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z``;
    ``sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)`` (eq. 16), where
    ``a`` is alpha_bar and ``a_prev = 1`` after the last step. ``eta = 0`` is deterministic.
    With ``clip_x0``, x0 is clipped to [-clip_x0, clip_x0] and eps recomputed from it.
    """

    def __init__(self, alpha_bars: torch.Tensor, n_steps: int, eta: float = 0.0, clip_x0: float | None = None) -> None:
        if eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        self.alpha_bars = alpha_bars
        self.eta = float(eta)
        self.clip_x0 = clip_x0
        self.timesteps = ddim_timesteps(len(alpha_bars), n_steps)
        self._prev = dict(zip(self.timesteps, self.timesteps[1:] + [-1]))

    @classmethod
    def from_model(cls, ddpm: nn.Module, n_steps: int, eta: float = 0.0, clip_x0: float | None = None) -> DDIMSampler:
        return cls(ddpm.alpha_bars, n_steps, eta, clip_x0)

    def needs_noise(self, t: int) -> bool:
        return self.eta > 0 and self._prev[t] >= 0

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One DDIM step from timestep ``t`` to the previous visited timestep. Shapes (B, C, H, W)."""
        prev = self._prev[t]
        a_t = self.alpha_bars[t]
        a_prev = self.alpha_bars[prev] if prev >= 0 else torch.ones_like(a_t)
        eps = clip_eps(eps, x_t, a_t, self.clip_x0)
        x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = self.eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if self.needs_noise(t):
            if noise is None:
                raise ValueError(f"DDIM step t={t} with eta={self.eta} adds noise: pass noise of shape {tuple(x_t.shape)}")
            x_prev = x_prev + sigma * noise
        return x_prev


def guided_eps(
    eps_model: nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor | None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Classifier-free guidance ``eps = (1 - w) eps_uncond + w eps_cond`` as in the original.

    The unconditional branch is the empty context (``dropout_mask`` True for every row),
    run in the same batch as the conditional one. ``w = 1`` is exactly the conditional
    output and ``w = 0`` exactly the unconditional one (a single forward each).
    """
    if context is None or guidance_scale == 1.0:
        return eps_model(x_t, t, context)
    if guidance_scale == 0.0:
        return eps_model(x_t, t, context, torch.ones(len(x_t), dtype=torch.bool, device=x_t.device))
    batch = len(x_t)
    mask = torch.arange(2 * batch, device=x_t.device) >= batch
    eps = eps_model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, context]), mask)
    eps_cond, eps_uncond = eps[:batch], eps[batch:]
    return (1 - guidance_scale) * eps_uncond + guidance_scale * eps_cond


def per_sample_noise(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Noise (B, *shape) with row ``b`` drawn from ``generators[b]`` on the CPU.

    Seeding one generator per image makes a sample independent of batch size, batch
    order, number of processes and device.
    """
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device)


def sample_loop(
    eps_fn: EpsFn,
    sampler: DDPMSampler | DDIMSampler,
    x_T: torch.Tensor,
    noise_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``sampler`` from ``x_T`` (B, C, H, W) to x_0.

    Args:
        eps_fn: ``eps_fn(x_t, t_batch) -> eps`` (t_batch: (B,) int64); wraps model, context, guidance and autocast.
        noise_fn: ``noise_fn(x_t) -> z`` like ``x_t``; defaults to ``torch.randn_like``.
        progress: show a tqdm bar.
    """
    noise_fn = noise_fn or torch.randn_like
    x_t = x_T
    for t in tqdm(sampler.timesteps, desc="denoising", disable=not progress, leave=False):
        t_batch = torch.full((len(x_t),), t, dtype=torch.long, device=x_t.device)
        eps = eps_fn(x_t, t_batch).to(x_t.dtype)
        noise = noise_fn(x_t) if sampler.needs_noise(t) else None
        x_t = sampler.step(eps, t, x_t, noise)
    return x_t
