"""Sample a synthetic identity dataset from a trained IDiff-Face run (see configs/sample_config.yaml)."""
import hydra
from omegaconf import DictConfig

from diffusion.generation import sample_from_config


@hydra.main(config_path="configs", config_name="sample_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Load ``cfg.checkpoint.path``, sample this shard's identities, log a summary."""
    sample_from_config(cfg)


if __name__ == "__main__":
    main()
