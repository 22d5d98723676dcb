"""Exponential moving average (EMA) of model weights with the warm-up schedule of IDiff-Face.

The decay used by the update that follows ``n`` earlier updates is

    k = max(0, n - update_after_step - 1)
    decay = 0                                               if k == 0
    decay = clip(1 - (1 + k / inv_gamma) ** -power, min_value, max_value)   otherwise

(IDiff-Face: inv_gamma 1, power 3/4, min 0, max 0.9999; 0.999 is reached after about 10K
updates; :class:`EMASchedule` holds these defaults, equal to ``training.ema`` of
``configs/train_config.yaml``). Unlike the original, whose decay buffer was never written and
which therefore copied the live weights at every step (see the reference NOTES, "EMA bug"), the
decay is applied.
Buffers (the DDPM schedule, norm statistics) are copied, not averaged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class EMASchedule:
    """The warm-up decay schedule (formula in the module docstring); defaults are IDiff-Face's."""

    inv_gamma: float = 1.0
    power: float = 0.75
    min_value: float = 0.0
    max_value: float = 0.9999
    update_after_step: int = 0

    def __post_init__(self) -> None:
        if not self.inv_gamma > 0:
            raise ValueError(f"EMA: inv_gamma must be > 0, found {self.inv_gamma}")
        if not 0.0 <= self.min_value <= self.max_value <= 1.0:
            raise ValueError(f"EMA: need 0 <= min_value <= max_value <= 1, found {self.min_value}, {self.max_value}")

    def decay(self, n_updates: int) -> float:
        """Decay of the update that follows ``n_updates`` earlier ones."""
        k = max(0, n_updates - self.update_after_step - 1)
        if k == 0:
            return 0.0
        value = 1.0 - (1.0 + k / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))


def ema_decay(n_updates: int, **schedule: Any) -> float:
    """Decay of the update that follows ``n_updates`` earlier ones; ``schedule``: :class:`EMASchedule` fields."""
    return EMASchedule(**schedule).decay(n_updates)


class EMAModel:
    """Keeps ``averaged_model``, a frozen deep copy of ``model`` whose parameters follow an EMA.

    Args:
        model: the trained module (unwrapped, not the DDP wrapper).
        schedule: :class:`EMASchedule` fields (``inv_gamma``, ``power``, ``min_value``, ``max_value``,
            ``update_after_step``), as ``training.ema`` passes them.
    """

    def __init__(self, model: nn.Module, **schedule: Any) -> None:
        self.schedule = EMASchedule(**schedule)
        self.averaged_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.optimization_step = 0
        self.decay = 0.0

    def get_decay(self, n_updates: int) -> float:
        """Decay of the update that follows ``n_updates`` earlier ones."""
        return self.schedule.decay(n_updates)

    @torch.no_grad()
    def step(self, model: nn.Module) -> float:
        """``ema = decay * ema + (1 - decay) * param`` for every parameter, buffers copied; returns the decay."""
        self.decay = self.get_decay(self.optimization_step)
        ema_params = dict(self.averaged_model.named_parameters())
        live, averaged = [], []
        for name, param in model.named_parameters():
            if name not in ema_params:
                raise KeyError(f"EMAModel.step: parameter {name!r} of the model is not in the averaged copy")
            target = ema_params[name]
            if param.requires_grad and target.is_floating_point():
                live.append(param.detach().to(target.dtype))
                averaged.append(target)
            else:
                target.copy_(param.detach())
        if averaged:
            torch._foreach_lerp_(averaged, live, 1.0 - self.decay)
        ema_buffers = dict(self.averaged_model.named_buffers())
        for name, buffer in model.named_buffers():
            ema_buffers[name].copy_(buffer)
        self.optimization_step += 1
        return self.decay

    def state_dict(self) -> dict[str, Any]:
        """Schedule counters only; the averaged weights are saved as their own file (``ema_averaged_model.ckpt``)."""
        return {"optimization_step": self.optimization_step, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters written by :meth:`state_dict`."""
        self.optimization_step = int(state["optimization_step"])
        self.decay = float(state["decay"])
