"""DPM-Solver++(2M) against its equations in float64 and against the exact probability-flow ODE solution."""
import math

import pytest
import torch
from torch import nn

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel
from diffusion.samplers import DDIMSampler, DPMSolverPP2MSampler, sample_loop


@pytest.fixture(scope="module")
def alpha_bars() -> torch.Tensor:
    """The original's linear schedule (T = 1000) in float64."""
    return DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000).double().alpha_bars


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A non-linear eps model, so the solver's history matters."""
    return torch.tanh(x) * 0.7 + torch.cos(t.view(-1, 1, 1, 1) / 300.0) * 0.2


def algorithm_2(eps_fn, alpha_bars: torch.Tensor, timesteps: list[int], x_T: torch.Tensor, clip: float | None = None):
    """Lu et al. 2022, Algorithm 2 (DPM-Solver++(2M)), written out in the paper's indexing.

    t_0 > ... > t_M are the visited timesteps followed by t_{M} with alpha = 1, sigma = 0 (lambda = +inf),
    where the first-order update is the data prediction itself.
    """
    a = [float(alpha_bars[t]) for t in timesteps]
    alpha = [math.sqrt(v) for v in a]
    sigma = [math.sqrt(1.0 - v) for v in a]
    lam = [math.log(alpha[i] / sigma[i]) for i in range(len(a))]

    def x_theta(x: torch.Tensor, i: int) -> torch.Tensor:
        t = torch.full((len(x),), timesteps[i], dtype=torch.long)
        x0 = (x - sigma[i] * eps_fn(x, t)) / alpha[i]
        return x0 if clip is None else x0.clamp(-clip, clip)

    M = len(timesteps)
    Q = [x_theta(x_T, 0)]
    if M == 1:
        return Q[0]
    h1 = lam[1] - lam[0]
    x = (sigma[1] / sigma[0]) * x_T - alpha[1] * (math.exp(-h1) - 1.0) * Q[0]
    for i in range(2, M):
        Q.append(x_theta(x, i - 1))
        h_i, h_prev = lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
        r_i = h_prev / h_i
        D_i = (1 + 1 / (2 * r_i)) * Q[-1] - (1 / (2 * r_i)) * Q[-2]
        x = (sigma[i] / sigma[i - 1]) * x - alpha[i] * (math.exp(-h_i) - 1.0) * D_i
    return x_theta(x, M - 1)  # the last step, to alpha = 1: first order, i.e. the x0 estimate


@pytest.mark.parametrize("n_steps, spacing", [(10, "linspace"), (12, "trailing"), (25, "leading"), (2, "linspace"),
                                              (1, "trailing")])
def test_matches_algorithm_2_in_float64(alpha_bars, n_steps, spacing):
    x_T = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sampler = DPMSolverPP2MSampler(alpha_bars, n_steps, timestep_spacing=spacing)
    ours = sample_loop(toy_eps, sampler, x_T)
    torch.testing.assert_close(ours, algorithm_2(toy_eps, alpha_bars, sampler.timesteps, x_T), atol=1e-12, rtol=1e-12)


def test_matches_algorithm_2_with_explicit_timesteps_and_clip(alpha_bars):
    x_T = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    timesteps = [999, 900, 700, 400, 250, 120, 60, 20, 5]
    sampler = DPMSolverPP2MSampler(alpha_bars, timesteps=timesteps, clip_x0=1.0)
    ours = sample_loop(toy_eps, sampler, x_T)
    torch.testing.assert_close(ours, algorithm_2(toy_eps, alpha_bars, timesteps, x_T, clip=1.0), atol=1e-12, rtol=1e-12)
    assert ours.abs().max() <= 1.0  # ends at a clipped x0 estimate
    unclipped = sample_loop(toy_eps, DPMSolverPP2MSampler(alpha_bars, timesteps=timesteps), x_T)
    assert (unclipped - ours).abs().max() > 0.1, "the test must exercise the clip"


def test_first_step_is_ddim_and_point_mass_is_exact(alpha_bars):
    """Data at a point mu: eps is exact along x_t = sqrt(a) mu + sqrt(1 - a) eps0, and the solver follows it exactly."""
    mu = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    eps0 = torch.randn_like(mu)

    def point_mass_eps(x, t):
        a = alpha_bars[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * mu) / (1 - a).sqrt()

    sampler = DPMSolverPP2MSampler(alpha_bars, 15, timestep_spacing="trailing")
    ddim = DDIMSampler(alpha_bars, 15, timestep_spacing="trailing")
    x = alpha_bars[999].sqrt() * mu + (1 - alpha_bars[999]).sqrt() * eps0
    sampler.reset()
    first = sampler.step(toy_eps(x, torch.full((2,), 999)), 999, x)
    torch.testing.assert_close(first, ddim.step(toy_eps(x, torch.full((2,), 999)), 999, x), atol=1e-12, rtol=1e-12)
    sampler.reset()
    for t, t_next in zip(sampler.timesteps, sampler.timesteps[1:] + [-1]):
        x = sampler.step(point_mass_eps(x, torch.full((2,), t)), t, x)
        a_next = alpha_bars[t_next] if t_next >= 0 else torch.tensor(1.0, dtype=torch.float64)
        torch.testing.assert_close(x, a_next.sqrt() * mu + (1 - a_next).sqrt() * eps0, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(x, mu, atol=1e-10, rtol=0)


def test_gaussian_data_converges_to_the_exact_ode_solution(alpha_bars):
    """x0 ~ N(m, s^2) per element: eps*(x_t, t) = sqrt(1 - a)(x_t - sqrt(a) m) / (a s^2 + 1 - a), and the
    probability-flow ODE keeps (x_t - sqrt(a) m) / sqrt(a s^2 + 1 - a), so from x_T it ends at
    x_0 = m + s (x_T - sqrt(a_T) m) / sqrt(a_T s^2 + 1 - a_T). Max-abs errors measured in float64
    (|x_0| up to about 4): DPM-Solver++ trailing 10/15/20/25 steps 0.218/0.101/0.062/0.039; DDIM trailing
    20 steps 0.338, DDIM all 1000 steps 0.0071. linspace ends with the long log-SNR step from t = 53
    to t = 0, where the second-order extrapolation is poor (DPM-Solver++ 20 steps 0.324), hence
    trailing for few steps; with many steps linspace shows the orders: DPM-Solver++ 100/200/400 steps
    0.0154/0.0035/0.0007 (second order), DDIM 0.070/0.035/0.018 (first order).
    """
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
    s = 0.3 + 1.2 * torch.rand(4, 3, 4, 4, generator=g, dtype=torch.float64)
    x_T = torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)

    def eps_star(x, t):
        a = alpha_bars[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s**2 + 1 - a)

    a_T = alpha_bars[999]
    exact = m + s * (x_T - a_T.sqrt() * m) / (a_T * s**2 + 1 - a_T).sqrt()

    def error(sampler_cls, n, spacing):
        x_0 = sample_loop(eps_star, sampler_cls(alpha_bars, n, timestep_spacing=spacing), x_T)
        return (x_0 - exact).abs().max().item()

    dpm = [error(DPMSolverPP2MSampler, n, "trailing") for n in (10, 15, 20, 25)]
    assert dpm[0] > dpm[1] > dpm[2] > dpm[3] and dpm[0] < 0.25 and dpm[2] < 0.07 and dpm[3] < 0.045, dpm
    ddim_20 = error(DDIMSampler, 20, "trailing")
    assert 0.3 < ddim_20 and dpm[2] < ddim_20 / 5, (dpm[2], ddim_20)
    assert error(DDIMSampler, 1000, "linspace") < 0.008
    dpm_many = [error(DPMSolverPP2MSampler, n, "linspace") for n in (100, 200, 400)]
    ddim_many = [error(DDIMSampler, n, "linspace") for n in (100, 200, 400)]
    for coarse, fine in zip(dpm_many, dpm_many[1:]):
        assert 3.5 < coarse / fine < 5.5, dpm_many  # second order: halving the step quarters the error
    for coarse, fine in zip(ddim_many, ddim_many[1:]):
        assert 1.8 < coarse / fine < 2.2, ddim_many  # first order


def test_state_is_reset_per_run_and_order_is_checked(alpha_bars):
    sampler = DPMSolverPP2MSampler(alpha_bars.float(), 8, timestep_spacing="trailing")
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    first = sample_loop(toy_eps, sampler, x_T)
    assert torch.equal(sample_loop(toy_eps, sampler, x_T), first)  # the same object serves a second run
    other = sample_loop(toy_eps, sampler, x_T * 0.5)
    assert torch.equal(sample_loop(toy_eps, sampler, x_T), first) and not torch.equal(other, first)
    with pytest.raises(ValueError, match="out of order: the next timestep is none .* call reset"):
        sampler.step(toy_eps(x_T, torch.full((3,), 999)), 999, x_T)  # the last run is over
    sampler.reset()
    with pytest.raises(ValueError, match="t=874 out of order: the next timestep is 999"):
        sampler.step(toy_eps(x_T, torch.full((3,), 874)), 874, x_T)
    assert not sampler.needs_noise(999)


def test_factory_builds_it(alpha_bars):
    ddpm = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000)
    sampler = ddpm.sampler("dpmpp_2m", 20, timestep_spacing="trailing")
    assert isinstance(sampler, DPMSolverPP2MSampler) and sampler.timesteps[0] == 999 and sampler.timesteps[-1] == 49
    assert ddpm.sampler("dpmpp_2m", timesteps=[999, 500, 0]).timesteps == [999, 500, 0]
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm'; expected one of \('ddpm', 'ddim', 'dpmpp_2m'\)"):
        ddpm.sampler("dpm")
