"""Align sampled identities (or real face folders) to 112x112 ArcFace crops (see configs/align_config.yaml)."""
import hydra
from omegaconf import DictConfig

from alignment.blocks import align_from_config


@hydra.main(config_path="configs", config_name="align_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Align ``cfg.align.input_dir`` into ``cfg.align.output_dir`` and write the JSON report."""
    align_from_config(cfg)


if __name__ == "__main__":
    main()
