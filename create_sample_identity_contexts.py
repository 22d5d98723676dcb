"""Create identity contexts for sample.py (see configs/contexts_config.yaml)."""
import hydra
from omegaconf import DictConfig

from contexts.sources import contexts_from_config


@hydra.main(config_path="configs", config_name="contexts_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Write ``<out_dir>/<name>.npy`` (original format) and ``<name>.npz`` (ours)."""
    contexts_from_config(cfg)


if __name__ == "__main__":
    main()
