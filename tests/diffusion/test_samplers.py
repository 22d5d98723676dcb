"""DDIM, timestep spacings and classifier-free guidance against closed forms."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel
from diffusion.samplers import DDIMSampler, DDPMSampler, check_timesteps, guided_eps, sample_loop, spaced_timesteps


class PointMassEps(nn.Module):
    """Optimal eps for data concentrated at ``mu``: eps = (x_t - sqrt(a_t) mu) / sqrt(1 - a_t)."""

    def __init__(self, mu: torch.Tensor, alpha_bars: torch.Tensor) -> None:
        super().__init__()
        self.mu, self.alpha_bars = mu, alpha_bars

    def forward(self, x_t, t, context=None, dropout_mask=None):
        a = self.alpha_bars[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * self.mu) / (1 - a).sqrt()


def closed_form(T: int, n: int, spacing: str) -> list[set[int]]:
    """diffusers' definitions in exact rational arithmetic, highest first: the allowed integer(s) per step.

    Where the exact value is a tie (k + 1/2) diffusers rounds its float64 approximation, which may
    fall on either side; everywhere else the timestep is the exact rational rounded.
    """
    if spacing == "linspace":
        values = [Fraction((T - 1) * i, n - 1) if n > 1 else Fraction(0) for i in range(n)]
    elif spacing == "leading":
        values = [Fraction(i * (T // n)) for i in range(n)]
    else:
        values = [Fraction(T * (n - i), n) - 1 for i in range(n)]
    allowed = [{math.floor(v), math.ceil(v)} if v.denominator == 2 else {round(v)} for v in values]
    return sorted(allowed, key=min, reverse=True)


@pytest.mark.parametrize("T, n", [(1000, 50), (1000, 20), (1000, 14), (1000, 1), (1000, 1000), (10, 6), (100, 38),
                                  (1000, 7), (1000, 25), (10, 4), (2000, 37)])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_timestep_spacings_equal_their_closed_forms(T, n, spacing):
    """The first seven (T, n) have no ties; the last four have ties in linspace and/or trailing."""
    steps = spaced_timesteps(T, n, spacing)
    allowed = closed_form(T, n, spacing)
    assert len(steps) == n and all(t in a for t, a in zip(steps, allowed)), (steps, allowed)
    assert all(b < a for a, b in zip(steps, steps[1:])) and 0 <= steps[-1] and steps[0] <= T - 1


def test_timestep_spacings_examples():
    """The endpoints that tell the spacings apart (T = 1000, n = 10)."""
    assert spaced_timesteps(1000, 10, "linspace") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert spaced_timesteps(1000, 10, "leading") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert spaced_timesteps(1000, 10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    # diffusers' np.arange overshoots to an 11th ... 62nd timestep (-1) for some n; we keep exactly n
    assert len(spaced_timesteps(1000, 61, "trailing")) == 61 and spaced_timesteps(1000, 61, "trailing")[-1] == 15


def test_linspace_is_the_previous_ddim_schedule():
    """linspace keeps what DDIM visited before spacings existed: the rounded, de-duplicated np.linspace."""
    for n in range(1, 1001):
        previous = sorted({int(round(v)) for v in np.linspace(0, 999, n)}, reverse=True)
        assert spaced_timesteps(1000, n, "linspace") == previous


def test_timestep_errors_are_clear():
    with pytest.raises(ValueError, match="steps <= T=1000"):
        spaced_timesteps(1000, 1001)
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        spaced_timesteps(1000, 10, "uniform")
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_timesteps([999, 500, 500, 0], 1000)
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_timesteps([0, 500, 999], 1000)
    with pytest.raises(ValueError, match=r"in \[0, T-1=999\], got 1000"):
        check_timesteps([1000, 10], 1000)
    with pytest.raises(ValueError, match=r"got 10 .. -1"):
        check_timesteps([10, -1], 1000)
    with pytest.raises(ValueError, match="non-empty list of integers"):
        check_timesteps([999, 5.5], 1000)
    with pytest.raises(ValueError, match="non-empty list of integers"):
        check_timesteps([], 1000)
    ddpm = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000)
    with pytest.raises(ValueError, match="steps=3 disagrees with the 2 explicit timesteps"):
        ddpm.sampler("ddim", 3, timesteps=[999, 0])


def test_explicit_timesteps_reproduce_a_spacing():
    """An explicit list runs exactly the steps of the spacing it spells out."""
    ddpm = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000)
    toy = lambda x, t: torch.sin(x) + t.view(-1, 1, 1, 1) / 1000.0  # noqa: E731
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    spelled = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    explicit = ddpm.sampler("ddim", timesteps=spelled)
    assert explicit.timesteps == spelled
    trailing = ddpm.sampler("ddim", 10, timestep_spacing="trailing")
    assert torch.equal(sample_loop(toy, explicit, x_T), sample_loop(toy, trailing, x_T))
    assert not torch.equal(sample_loop(toy, explicit, x_T), sample_loop(toy, ddpm.sampler("ddim", 10), x_T))


@pytest.mark.parametrize("n_steps", [1000, 37])
def test_ddim_point_mass_trajectory_closed_form(n_steps):
    """Deterministic DDIM keeps eps constant for a point mass: x_t = sqrt(a_t) mu + sqrt(1 - a_t) eps_0 at every visited t."""
    ddpm = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000).double()
    mu = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    model = PointMassEps(mu, ddpm.alpha_bars)
    sampler = DDIMSampler(ddpm.alpha_bars, n_steps, eta=0.0)
    eps0 = torch.randn_like(mu)
    a = ddpm.alpha_bars
    x = a[999].sqrt() * mu + (1 - a[999]).sqrt() * eps0
    for t, t_prev in zip(sampler.timesteps, sampler.timesteps[1:] + [-1]):
        x = sampler.step(model(x, torch.full((2,), t)), t, x)
        a_prev = a[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        torch.testing.assert_close(x, a_prev.sqrt() * mu + (1 - a_prev).sqrt() * eps0, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(x, mu, atol=1e-9, rtol=0)


def test_ddim_all_steps_equals_paper_update_for_any_eps_model():
    """Eq. 12 of Song et al. with sigma = 0, written out per step in float64, for a non-linear toy eps model."""
    ddpm = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000).double()
    toy = lambda x, t: torch.tanh(x) * 0.3 + t.view(-1, 1, 1, 1) / 1000.0  # noqa: E731
    x_T = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ours = sample_loop(toy, DDIMSampler(ddpm.alpha_bars, 1000, eta=0.0), x_T)
    x = x_T
    a = ddpm.alpha_bars.tolist()
    for t in range(999, -1, -1):
        eps = toy(x, torch.full((2,), t))
        a_t, a_prev = a[t], (a[t - 1] if t > 0 else 1.0)
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    torch.testing.assert_close(ours, x, atol=1e-10, rtol=1e-10)


def test_ddim_eta_one_noise_scale():
    """With eta = 1, sigma equals the DDPM posterior std sqrt(beta_tilde) (eq. 16)."""
    ddpm = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000).double()
    sampler = DDIMSampler(ddpm.alpha_bars, 1000, eta=1.0)
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    eps = torch.zeros_like(x)
    t = 500
    out = sampler.step(eps, t, x, noise=torch.ones_like(x))
    a_t, a_prev = ddpm.alpha_bars[t], ddpm.alpha_bars[t - 1]
    beta_tilde = (1 - a_prev) / (1 - a_t) * ddpm.betas[t]
    # alpha_bars are float32 products, so a_t / a_prev equals alpha_t only to ~1e-7 (relative 1e-5 of beta)
    torch.testing.assert_close(out.squeeze(), beta_tilde.sqrt(), atol=0, rtol=1e-4)
    with pytest.raises(ValueError, match="adds noise"):
        sampler.step(eps, t, x)


class ContextToy(nn.Module):
    """eps depends on the context row, or on an 'empty' constant for masked rows / no context."""

    def forward(self, x_t, t, context=None, dropout_mask=None):
        c = torch.zeros(len(x_t), 1) if context is None else context[:, :1].clone()
        if dropout_mask is not None:
            c[dropout_mask] = 0.0
        return x_t * 0.5 + c.view(-1, 1, 1, 1)


def test_cfg_scales():
    model = ContextToy()
    x = torch.randn(3, 2, 4, 4)
    t = torch.tensor([5, 6, 7])
    ctx = torch.randn(3, 8)
    cond, uncond = model(x, t, ctx), model(x, t, None)
    assert torch.equal(guided_eps(model, x, t, ctx, 1.0), cond)
    assert torch.equal(guided_eps(model, x, t, ctx, 0.0), uncond)
    torch.testing.assert_close(guided_eps(model, x, t, ctx, 3.0), uncond + 3.0 * (cond - uncond))


def test_clip_x0_none_is_the_original_update():
    """clip_x0=None leaves both samplers bitwise unchanged, even for an eps far off the data range."""
    ddpm = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000)
    x, eps = torch.randn(2, 3, 4, 4) * 3, torch.randn(2, 3, 4, 4) * 5
    noise = torch.randn_like(x)
    for t in (999, 500, 2, 0):
        plain = DDPMSampler.from_model(ddpm).step(eps, t, x, noise)
        manual = ddpm.sqrt_alphas_inv[t] * (x - eps * ddpm.one_minus_alphas_over_sqrt_one_minus_alpha_bars[t])
        if t > 1:
            manual = manual + ddpm.sigmas[t] * noise
        assert torch.equal(plain, manual)


@pytest.mark.parametrize("t", [999, 600, 50, 2])
def test_ddpm_clip_x0_is_posterior_mean_at_clipped_x0(t):
    """With clip_x0 the DDPM mean is q(x_{t-1} | x_t, x0)'s mean, eq. 7 of Ho et al., at x0 clipped to [-1, 1]."""
    betas = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000).betas.double()
    alpha_bars = torch.cumprod(1 - betas, 0)  # a float64 schedule, so the closed form holds to rounding
    sampler = DDPMSampler((1 - betas).rsqrt(), betas / (1 - alpha_bars).sqrt(), betas.sqrt(), alpha_bars, clip_x0=1.0)
    x_t = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 2
    eps = torch.randn_like(x_t) * 3
    noise = torch.randn_like(x_t)
    out = sampler.step(eps, t, x_t, noise)
    beta, a_t, a_prev = betas[t], alpha_bars[t], alpha_bars[t - 1]
    x0 = ((x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
    assert (x0.abs() == 1).any(), "the test must exercise the clip"
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x_t
    torch.testing.assert_close(out, mean + beta.sqrt() * noise, atol=1e-9, rtol=1e-9)
    sampler.clip_x0 = None
    assert (out - sampler.step(eps, t, x_t, noise)).abs().max() > 1e-3


def test_ddim_clip_x0_keeps_samples_in_range():
    """An eps model that drives x0 far off the range: clipped DDIM ends inside [-1, 1], unclipped does not."""
    ddpm = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000)
    wild = lambda x, t: -3.0 * torch.ones_like(x)  # noqa: E731  (x0 estimate >> 1)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    clipped = sample_loop(wild, ddpm.sampler("ddim", 20, clip_x0=1.0), x_T)
    plain = sample_loop(wild, ddpm.sampler("ddim", 20), x_T)
    assert clipped.abs().max() <= 1.0 + 1e-5
    assert plain.abs().max() > 10
    last = DDIMSampler(ddpm.alpha_bars, 20, clip_x0=0.5)
    x = torch.randn(1, 3, 4, 4) * 4
    torch.testing.assert_close(last.step(torch.zeros_like(x), 0, x), (x / ddpm.alpha_bars[0].sqrt()).clamp(-0.5, 0.5))
    with pytest.raises(ValueError, match="clip_x0 must be > 0"):
        DDIMSampler(ddpm.alpha_bars, 20, clip_x0=-1.0).step(torch.zeros_like(x), 999, x)
