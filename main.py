"""Train IDiff-Face's identity-conditioned diffusion model: ``python main.py [overrides]``.

Single process: ``python main.py``; several GPUs: ``torchrun --nproc-per-node 8 main.py ...``
(see README). Configuration: ``configs/train_config.yaml``.
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from diffusion.training import TrainingError, train


@hydra_app("train_config", errors=(TrainingError,))
def main(cfg: DictConfig) -> None:
    """Run :func:`diffusion.training.train` in Hydra's run folder."""
    train(cfg)


if __name__ == "__main__":
    main()
