"""EMA: decay schedule and averaged weights against their closed forms."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusion.ema import EMAModel, ema_decay


def test_decay_schedule_closed_form() -> None:
    assert ema_decay(0) == 0.0 and ema_decay(1) == 0.0
    for n in (2, 3, 10, 1000, 10_001):
        k = n - 1
        assert ema_decay(n) == pytest.approx(1 - (1 + k) ** -0.75, rel=1e-12)
    assert ema_decay(10**9) == 0.9999  # clipped at max_value
    assert ema_decay(5, inv_gamma=2.0, power=1.0, update_after_step=2) == pytest.approx(1 - (1 + 2 / 2.0) ** -1.0)


def test_ema_equals_closed_form_weighted_average() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    model.register_buffer("counter", torch.zeros(()))
    ema = EMAModel(model, inv_gamma=1.0, power=0.75, max_value=0.9999)
    weights = [torch.randn(3, 4, dtype=torch.float64) for _ in range(30)]
    for i, w in enumerate(weights):
        with torch.no_grad():
            model.weight.copy_(w)
            model.counter.fill_(i)
        ema.step(model)
    # ema_N = sum_k w_k (1 - d_k) prod_{j > k} d_j with d_k = decay of the k-th update
    decays = [ema_decay(k) for k in range(len(weights))]
    expected = torch.zeros(3, 4, dtype=torch.float64)
    for k, w in enumerate(weights):
        expected += w * (1 - decays[k]) * math.prod(decays[k + 1:])
    torch.testing.assert_close(ema.averaged_model.weight.double(), expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(ema.averaged_model.weight.double(), weights[-1].float().double())  # averages, not copies
    assert ema.averaged_model.counter.item() == len(weights) - 1  # buffers are copied
    assert ema.optimization_step == len(weights)
    assert not any(p.requires_grad for p in ema.averaged_model.parameters())


def test_state_dict_round_trip_resumes_the_schedule() -> None:
    """A fresh EMA given the counters (and the averaged weights, saved as their own file) continues exactly."""
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    ema = EMAModel(model)
    for _ in range(5):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 2))
        ema.step(model)
    restored = EMAModel(nn.Linear(2, 2))
    assert restored.optimization_step == 0
    restored.load_state_dict(ema.state_dict())
    restored.averaged_model.load_state_dict(ema.averaged_model.state_dict())
    assert restored.optimization_step == 5 and restored.decay == ema.decay == ema_decay(4)
    with torch.no_grad():
        model.weight.add_(torch.randn(2, 2))
    assert restored.step(model) == ema.step(model) == pytest.approx(1 - 5**-0.75, rel=1e-12)  # the 6th update
    torch.testing.assert_close(restored.averaged_model.weight, ema.averaged_model.weight, atol=0, rtol=0)
