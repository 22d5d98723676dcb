"""Sample a synthetic identity dataset from a trained IDiff-Face run (see configs/sample_config.yaml)."""
from omegaconf import DictConfig

from cli.app import hydra_app
from diffusion.generation import sample_from_config


@hydra_app("sample_config")
def main(cfg: DictConfig) -> None:
    """Load ``cfg.checkpoint.path``, sample this shard's identities, log a summary."""
    sample_from_config(cfg)


if __name__ == "__main__":
    main()
