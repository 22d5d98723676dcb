"""Reverse-process samplers over the schedule buffers of :class:`diffusion.ddpm.DenoisingDiffusionProbabilisticModel`.

A sampler holds only schedule arrays and the timesteps it visits; the caller runs the
model and loops ``x = sampler.step(eps, t, x, noise)`` (:func:`sample_loop`). Nothing here picks a device.

* :class:`DDPMSampler`: the original's ancestral update (Algorithm 2 of Ho et al. with
  sigma^2 = beta, noise only for t > 1, exactly as IDiff-Face does).
* :class:`DDIMSampler`: Song et al.'s DDIM over any subsequence of the schedule, with eta.
* :class:`DPMSolverPP2MSampler`: Lu et al.'s DPM-Solver++(2M), the multistep second-order solver of
  the probability-flow ODE in data prediction, for 10-25 steps.
* DDIM and DPM-Solver++ visit the timesteps of :func:`spaced_timesteps` (diffusers' ``linspace``,
  ``leading``, ``trailing``) or an explicit list (:func:`check_timesteps`), highest first.
* All take ``clip_x0``: ``None`` (the original, right for VQ latents, which have no fixed range) or
  ``c`` to clip the model's estimate of x0 to [-c, c] before each step (Ho et al.'s ``clip_denoised``;
  use 1.0 for pixel-space models, whose estimate ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` is
  amplified up to ``1 / sqrt(a_T)`` times at high noise and otherwise drifts off the image range).
* :func:`guided_eps`: classifier-free guidance (the empty context is the unconditional branch)
  combined with negative-context guidance (NegFaceDiff), all branches in one batched model call.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: ``sampling.sampler``: names of :meth:`diffusion.ddpm.DenoisingDiffusionProbabilisticModel.sampler`.
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")

#: diffusers' names for the ways of spreading n steps over the T timesteps.
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


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


def spaced_timesteps(T: int, n_steps: int, spacing: str = "linspace") -> list[int]:
    """``n_steps`` of the timesteps 0..T-1, highest first, as diffusers' ``DDIMScheduler.set_timesteps``.

    With i = 0..n-1 (Table 2 of Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"):

    * ``linspace``: ``round((T - 1) i / (n - 1))``: from T-1 down to 0 (IDiff-Face's DDIM and ours so far);
    * ``leading``: ``i * floor(T / n)``: from (n-1) floor(T/n) down to 0 (diffusers' ``steps_offset=0``);
    * ``trailing``: ``round(T - i T / n) - 1``: from T-1 down to round(T/n) - 1.

    Rounding is numpy's (half to even) on the float64 values diffusers computes, so ties round as
    there. diffusers' ``trailing`` adds a timestep -1 for some n (``np.arange`` overshoots, e.g.
    T=1000, n=61): here the list has exactly n entries.
    """
    if not 1 <= n_steps <= T:
        raise ValueError(f"sampling needs 1 <= steps <= T={T}, got steps={n_steps}")
    if spacing == "linspace":
        values = np.linspace(0, T - 1, n_steps).round()
    elif spacing == "leading":
        values = np.arange(n_steps) * (T // n_steps)
    elif spacing == "trailing":
        values = np.round(np.arange(T, 0, -T / n_steps))[:n_steps] - 1
    else:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    return sorted((int(v) for v in values), reverse=True)


def check_timesteps(timesteps: Sequence[int], T: int) -> list[int]:
    """An explicit schedule as a list of ints; it must be non-empty, strictly decreasing and within [0, T-1]."""
    values = list(timesteps)
    if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"timesteps must be a non-empty list of integers, got {values!r}")
    values = [int(v) for v in values]
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f"timesteps must be strictly decreasing (highest first), got {values}")
    if values[0] > T - 1 or values[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, T-1={T - 1}], got {values[0]} .. {values[-1]}")
    return values


def resolve_timesteps(T: int, n_steps: int | None, spacing: str, timesteps: Sequence[int] | None) -> list[int]:
    """The explicit ``timesteps`` if given (``n_steps`` must then be None or their count), else ``spaced_timesteps``."""
    if timesteps is None:
        return spaced_timesteps(T, T if n_steps is None else n_steps, spacing)
    values = check_timesteps(timesteps, T)
    if n_steps is not None and n_steps != len(values):
        raise ValueError(f"steps={n_steps} disagrees with the {len(values)} explicit timesteps; give one of them")
    return values


class Sampler:
    """What :func:`sample_loop` drives: ``timesteps`` (highest first), ``needs_noise``, ``step`` and ``reset``."""

    timesteps: list[int]

    def needs_noise(self, t: int) -> bool:
        """Whether step ``t`` adds fresh noise (deterministic samplers: never)."""
        return False

    def reset(self) -> None:
        """Forget what a previous run left behind; single-step samplers keep nothing."""

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x at the next visited timestep from ``eps`` = eps_theta(x_t, t); all (B, C, H, W)."""
        raise NotImplementedError


class DDPMSampler(Sampler):
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


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12) on a subsequence of the schedule.

    ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``;
    ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z``;
    ``sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)`` (eq. 16), where
    ``a`` is alpha_bar, ``prev`` the next visited timestep and ``a_prev = 1`` after the last one.
    ``eta = 0`` is deterministic. With ``clip_x0``, x0 is clipped to [-clip_x0, clip_x0] and eps
    recomputed from it. (diffusers' ``DDIMScheduler.step`` instead steps to ``t - T // n``, which is
    the next visited timestep only for ``leading`` spacing.)
    """

    def __init__(self, alpha_bars: torch.Tensor, n_steps: int | None = None, eta: float = 0.0,
                 clip_x0: float | None = None, timestep_spacing: str = "linspace",
                 timesteps: Sequence[int] | None = None) -> None:
        if eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        self.alpha_bars = alpha_bars
        self.eta = float(eta)
        self.clip_x0 = clip_x0
        self.timesteps = resolve_timesteps(len(alpha_bars), n_steps, timestep_spacing, timesteps)
        self._prev = dict(zip(self.timesteps, self.timesteps[1:] + [-1]))

    @classmethod
    def from_model(cls, ddpm: nn.Module, n_steps: int | None = None, eta: float = 0.0, clip_x0: float | None = None,
                   timestep_spacing: str = "linspace", timesteps: Sequence[int] | None = None) -> DDIMSampler:
        return cls(ddpm.alpha_bars, n_steps, eta, clip_x0, timestep_spacing, timesteps)

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


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, second order, data prediction, deterministic.

    With visited timesteps t_0 > t_1 > ... > t_{n-1}, ``alpha = sqrt(a)``, ``sigma = sqrt(1 - a)``
    (``a`` = alpha_bar), ``lambda = log(alpha / sigma)`` and the data prediction
    ``x0_i = (x_i - sigma_i eps_i) / alpha_i`` (clipped to [-clip_x0, clip_x0] if set), step i goes

    ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h_i) - 1) D_i``,  ``h_i = lambda_{i+1} - lambda_i``,

    with ``D_0 = x0_0`` (the first step is first order, i.e. DDIM) and for i >= 1
    ``D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1}``, ``r_i = h_{i-1} / h_i``. The last step goes
    to a = 1 (sigma = 0, lambda = inf), where the first-order update is ``x0_{n-1}`` itself (the
    second-order one diverges as r -> 0), so the run ends at the x0 estimate, as DDIM does.

    With few steps use ``trailing`` spacing: ``linspace`` visits t = 0, and with the linear schedule its
    last interval then spans most of the log-SNR range (t = 53 -> 0 at n = 20: h = 2.9 after 0.7), where the
    second-order extrapolation is poor (tests/diffusion/test_dpm_solver.py measures both).

    The multistep state (the last step's index and x0) lives in the sampler: :meth:`reset` starts a
    new run (:func:`sample_loop` calls it), and ``step`` refuses a timestep out of order.
    """

    def __init__(self, alpha_bars: torch.Tensor, n_steps: int | None = None, clip_x0: float | None = None,
                 timestep_spacing: str = "linspace", timesteps: Sequence[int] | None = None) -> None:
        if clip_x0 is not None and clip_x0 <= 0:
            raise ValueError(f"clip_x0 must be > 0 or None, got {clip_x0}")
        self.clip_x0 = clip_x0
        self.timesteps = resolve_timesteps(len(alpha_bars), n_steps, timestep_spacing, timesteps)
        a = alpha_bars.detach().double().cpu()[self.timesteps].tolist()
        if not all(0 < v < 1 for v in a):
            raise ValueError("DPM-Solver++ needs 0 < alpha_bar < 1 at every visited timestep")
        self._alpha = [math.sqrt(v) for v in a]
        self._sigma = [math.sqrt(1 - v) for v in a]
        lam = [0.5 * (math.log(v) - math.log1p(-v)) for v in a]
        self._h = [lam[i + 1] - lam[i] for i in range(len(a) - 1)]
        self._index = {t: i for i, t in enumerate(self.timesteps)}
        self._last: tuple[int, torch.Tensor] | None = None

    @classmethod
    def from_model(cls, ddpm: nn.Module, n_steps: int | None = None, clip_x0: float | None = None,
                   timestep_spacing: str = "linspace", timesteps: Sequence[int] | None = None) -> DPMSolverPP2MSampler:
        return cls(ddpm.alpha_bars, n_steps, clip_x0, timestep_spacing, timesteps)

    def reset(self) -> None:
        self._last = None

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One step from timestep ``t`` to the next visited one (to x0 after the last). Shapes (B, C, H, W)."""
        i = self._index.get(t)
        expected = 0 if self._last is None else self._last[0] + 1
        if i != expected:
            wanted = self.timesteps[expected] if expected < len(self.timesteps) else "none (the run is over)"
            raise ValueError(f"DPM-Solver++ step at t={t} out of order: the next timestep is {wanted}; "
                             "call reset() before a new sampling run")
        x0 = (x_t - self._sigma[i] * eps) / self._alpha[i]
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        previous = self._last
        self._last = (i, x0)
        if i == len(self.timesteps) - 1:
            return x0
        h = self._h[i]
        if previous is None:
            d = x0
        else:
            half_inv_r = 0.5 * h / self._h[i - 1]
            d = (1 + half_inv_r) * x0 - half_inv_r * previous[1]
        return (self._sigma[i + 1] / self._sigma[i]) * x_t + (self._alpha[i + 1] * -math.expm1(-h)) * d


def guided_eps(
    eps_model: nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor | None,
    guidance_scale: float = 1.0,
    negative_context: torch.Tensor | None = None,
    negative_scale: float = 0.0,
) -> torch.Tensor:
    """Classifier-free guidance with an optional negative context, in one batched model call.

    ``eps = (1 - w) eps(x_t, empty) + (w + s) eps(x_t, c) - s eps(x_t, c_neg)``, i.e. the original's
    CFG ``eps_w = (1 - w) eps_uncond + w eps_cond`` plus NegFaceDiff's push away from the negative
    context ``s (eps(x_t, c) - eps(x_t, c_neg))``; with w = 1 it is NegFaceDiff's
    ``(1 + s) eps(x_t, c) - s eps(x_t, c_neg)`` (the paper's w is our s), with s = 0 the original CFG.
    The empty context is the model's own (``dropout_mask`` True). Only the branches needed run:
    ``w = 1, s = 0`` is exactly the conditional output and ``w = 0, s = 0`` exactly the unconditional one.

    Args:
        x_t: (B, C, H, W); t: (B,) int64; context, negative_context: (B, D) rows for each sample.
        guidance_scale: w; negative_scale: s (0 = no negative branch).
    """
    negative = negative_context is not None and negative_scale != 0.0
    if context is None:
        if negative:
            raise ValueError("negative guidance needs a conditional model: context is None")
        return eps_model(x_t, t, None)
    if not negative:
        if guidance_scale == 1.0:
            return eps_model(x_t, t, context)
        if guidance_scale == 0.0:
            return eps_model(x_t, t, context, torch.ones(len(x_t), dtype=torch.bool, device=x_t.device))
    batch = len(x_t)
    contexts, empty = [context], [False]
    if guidance_scale != 1.0:
        contexts, empty = contexts + [context], empty + [True]
    if negative:
        if negative_context.shape != context.shape:
            raise ValueError(f"negative_context has shape {tuple(negative_context.shape)}, "
                             f"expected {tuple(context.shape)}")
        contexts, empty = contexts + [negative_context], empty + [False]
    k = len(contexts)
    mask = None
    if any(empty):
        mask = torch.tensor(empty, device=x_t.device).repeat_interleave(batch)
    eps = eps_model(torch.cat([x_t] * k), torch.cat([t] * k), torch.cat(contexts), mask).split(batch)
    if not negative:
        return (1 - guidance_scale) * eps[1] + guidance_scale * eps[0]
    guided = (guidance_scale + negative_scale) * eps[0] - negative_scale * eps[-1]
    return guided if guidance_scale == 1.0 else guided + (1 - guidance_scale) * eps[1]


def per_sample_noise(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Noise (B, *shape) with row ``b`` drawn from ``generators[b]`` on the CPU.

    Seeding one generator per image makes a sample independent of batch size, batch
    order, number of processes and device.
    """
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device)


def sample_loop(
    eps_fn: EpsFn,
    sampler: Sampler,
    x_T: torch.Tensor,
    noise_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``sampler`` from ``x_T`` (B, C, H, W) to x_0 (it is reset first, so one sampler serves many runs).

    Args:
        eps_fn: ``eps_fn(x_t, t_batch) -> eps`` (t_batch: (B,) int64); wraps model, context, guidance and autocast.
        noise_fn: ``noise_fn(x_t) -> z`` like ``x_t``; defaults to ``torch.randn_like``.
        progress: show a tqdm bar.
    """
    noise_fn = noise_fn or torch.randn_like
    sampler.reset()
    x_t = x_T
    for t in tqdm(sampler.timesteps, desc="denoising", disable=not progress, leave=False):
        t_batch = torch.full((len(x_t),), t, dtype=torch.long, device=x_t.device)
        eps = eps_fn(x_t, t_batch).to(x_t.dtype)
        noise = noise_fn(x_t) if sampler.needs_noise(t) else None
        x_t = sampler.step(eps, t, x_t, noise)
    return x_t
