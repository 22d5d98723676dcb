"""Sample a synthetic identity dataset from a trained IDiff-Face run (see configs/sample_config.yaml)."""
from omegaconf import DictConfig

from diffusion.generation import sample_from_config
from utils.cli import hydra_app


@hydra_app("sample_config")
def main(cfg: DictConfig) -> None:
    """Load ``cfg.checkpoint.path``, sample this shard's identities, log a summary."""
    sample_from_config(cfg)


if __name__ == "__main__":
    main()
