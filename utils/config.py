"""Hydra config helpers shared by the scripts, the demo and the tests."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

#: The project's config tree (``configs/`` beside the packages).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with command-line style ``overrides``.

    Works outside ``@hydra.main`` (tests, notebooks) and inside it (a script composing a second
    config, as ``demo.py`` does), where Hydra is already initialised on the same config folder.
    """
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or None) -> the first CUDA device when present, else the CPU; otherwise ``torch.device(name)``."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was requested but CUDA is not available; use device=cpu or device=auto")
    return device
