"""Learning-rate schedules of IDiff-Face's FR training and early stopping on the benchmark mean.

- ``step``: the LR is multiplied by ``factor`` when the 0-based epoch index reaches each
  milestone (``MultiStepLR``, stepped once per epoch). The original's ``lr_step_func`` with
  ``schedule = [22, 30, 35]`` drops at 0-based epochs 21, 29 and 34.
- ``plateau`` (the original's ``auto_schedule``): ``ReduceLROnPlateau(mode="max", factor=0.1,
  patience=4)`` on the mean verification accuracy, and training stops once the best epoch is
  ``early_stop_patience`` (6) epochs old.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

SCHEDULES = ("step", "plateau")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Mapping[str, Any]) -> Any:
    """``MultiStepLR`` or ``ReduceLROnPlateau`` from a ``fr/schedule`` config (``name`` selects)."""
    name = schedule.get("name")
    if name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(schedule["milestones"]), gamma=float(schedule["factor"])
        )
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=float(schedule["factor"]), patience=int(schedule["patience"])
        )
    raise ValueError(f"fr.schedule.name must be one of {SCHEDULES}, found {name!r}")


def step_scheduler(scheduler: Any, mean_accuracy: float | None) -> None:
    """Advance the schedule after one epoch (the plateau schedule needs ``mean_accuracy``)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if mean_accuracy is None:
            raise ValueError("the plateau schedule needs verification results each epoch (set eval.bin_dir)")
        scheduler.step(mean_accuracy)
    else:
        scheduler.step()


@dataclass
class EarlyStopping:
    """Stop when the best mean accuracy is ``patience`` epochs old (``patience`` <= 0 never stops)."""

    patience: int
    best_accuracy: float = float("-inf")
    best_epoch: int = -1

    def update(self, epoch: int, mean_accuracy: float) -> bool:
        """Record epoch ``epoch``'s accuracy; True when it is a new best."""
        if mean_accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = mean_accuracy, epoch
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        """True when no improvement happened in the last ``patience`` epochs."""
        return self.patience > 0 and self.best_epoch >= 0 and epoch - self.best_epoch >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_accuracy, self.best_epoch = float(state["best_accuracy"]), int(state["best_epoch"])
