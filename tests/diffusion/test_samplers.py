"""DDIM and classifier-free guidance against closed forms."""
import math

import pytest
import torch
from torch import nn

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel
from diffusion.samplers import DDIMSampler, ddim_timesteps, guided_eps, sample_loop


class PointMassEps(nn.Module):
    """Optimal eps for data concentrated at ``mu``: eps = (x_t - sqrt(a_t) mu) / sqrt(1 - a_t)."""

    def __init__(self, mu: torch.Tensor, alpha_bars: torch.Tensor) -> None:
        super().__init__()
        self.mu, self.alpha_bars = mu, alpha_bars

    def forward(self, x_t, t, context=None, dropout_mask=None):
        a = self.alpha_bars[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * self.mu) / (1 - a).sqrt()


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    steps = ddim_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0
    with pytest.raises(ValueError, match="steps <= T=1000"):
        ddim_timesteps(1000, 1001)


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
