"""Align sampled identities (or real face folders) to 112x112 ArcFace crops (see configs/align_config.yaml)."""
from omegaconf import DictConfig

from alignment.blocks import align_from_config
from cli.app import hydra_app


@hydra_app("align_config")
def main(cfg: DictConfig) -> None:
    """Align ``cfg.align.input_dir`` into ``cfg.align.output_dir`` and write the JSON report."""
    align_from_config(cfg)


if __name__ == "__main__":
    main()
