"""Create identity contexts for sample.py (see configs/contexts_config.yaml)."""
from omegaconf import DictConfig

from cli.app import hydra_app
from contexts.sources import contexts_from_config


@hydra_app("contexts_config")
def main(cfg: DictConfig) -> None:
    """Write ``<out_dir>/<name>.npy`` (original format) and ``<name>.npz`` (ours)."""
    contexts_from_config(cfg)


if __name__ == "__main__":
    main()
