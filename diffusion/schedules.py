"""Noise schedules of the original IDiff-Face DDPM, computed with the same formulas.

The derived arrays must be bitwise equal to the ones stored in published checkpoints, so
the operation order follows the original: ``alpha_bars = exp(cumsum(log(alphas)))``
(not ``cumprod``) and the posterior coefficient divides ``1 - alphas`` (not ``betas``).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: Names (and order) of the schedule buffers in IDiff-Face checkpoints.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas",
    "sigmas",
    "sqrt_alphas_inv",
    "alpha_bars",
    "sqrt_alpha_bars",
    "sqrt_one_minus_alpha_bars",
    "one_minus_alphas_over_sqrt_one_minus_alpha_bars",
)

COSINE_OFFSET_S = 0.008


def linear_betas(T: int) -> torch.Tensor:
    """DDPM's linear schedule rescaled to ``T``: ``linspace(1e-4 * 1000/T, 0.02 * 1000/T, T)`` (T,) float32."""
    scale = 1000 / T
    return torch.linspace(scale * 0.0001, scale * 0.02, T, dtype=torch.float32)


def betas_for_alpha_bar(T: int, alpha_bar: Callable[[float], float], beta_min: float, beta_max: float) -> torch.Tensor:
    """``beta_i = clip(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), beta_min, beta_max)`` in float64, returned (T,) float32."""
    betas = [min(max(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), beta_min), beta_max) for i in range(T)]
    return torch.tensor(betas).float()


def cosine_betas(T: int, k: float = 1.0, beta_min: float = 0.0, beta_max: float = 0.1, warped: bool = False) -> torch.Tensor:
    """Improved-DDPM cosine schedule (s = 0.008); ``warped`` enables the original's k / beta_min variant."""
    if not warped:
        k, beta_min = 1, 0.0
    s = COSINE_OFFSET_S
    return betas_for_alpha_bar(
        T, lambda t: math.cos(math.pi / 2 * (t + s) / (1 + s) ** k) ** 2, beta_min=beta_min, beta_max=beta_max
    )


def compute_beta_schedule(
    T: int, schedule_type: str = "linear", k: float | None = 1.0, beta_min: float | None = 0.0, beta_max: float | None = 0.1
) -> torch.Tensor:
    """Betas (T,) float32 for ``schedule_type`` in ``linear``, ``cosine``, ``cosine_warped``."""
    kind = schedule_type.lower()
    if kind == "linear":
        return linear_betas(T)
    if kind in ("cosine", "cosine_warped"):
        if beta_max is None:
            raise ValueError(f"schedule_type={schedule_type!r} needs schedule_beta_max (the original uses 0.1)")
        return cosine_betas(
            T, k=1.0 if k is None else k, beta_min=0.0 if beta_min is None else beta_min, beta_max=beta_max,
            warped=kind == "cosine_warped",
        )
    raise ValueError(f"unknown schedule_type {schedule_type!r}; expected 'linear', 'cosine' or 'cosine_warped'")


def schedule_constants(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 8 named arrays of the original DDPM from betas (T,), in checkpoint order."""
    alphas = 1 - betas
    alpha_bars = torch.cumsum(torch.log(alphas), dim=0).exp()
    sqrt_one_minus_alpha_bars = (1 - alpha_bars).sqrt()
    return {
        "betas": betas,
        "alphas": alphas,
        "sigmas": betas.sqrt(),
        "sqrt_alphas_inv": 1 / alphas.sqrt(),
        "alpha_bars": alpha_bars,
        "sqrt_alpha_bars": alpha_bars.sqrt(),
        "sqrt_one_minus_alpha_bars": sqrt_one_minus_alpha_bars,
        "one_minus_alphas_over_sqrt_one_minus_alpha_bars": (1 - alphas) / sqrt_one_minus_alpha_bars,
    }
