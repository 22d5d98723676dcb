"""Train IDiff-Face's identity-conditioned diffusion model: ``python main.py [overrides]``.

Single process: ``python main.py``; several GPUs: ``torchrun --nproc-per-node 8 main.py ...``
(see README). Configuration: ``configs/train_config.yaml``.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from diffusion.data import DatasetError
from diffusion.training import TrainingError, train
from utils.checkpoint import CheckpointError


@hydra.main(config_path="configs", config_name="train_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`diffusion.training.train`; user-facing errors end the program with one line."""
    try:
        train(cfg)
    except (DatasetError, CheckpointError, TrainingError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
