"""Sample filters: drop outlier images, inconsistent and look-alike identities, cut to N x K (configs/filter_config.yaml).

    python filter_identities.py filter.embeddings=outputs/embeddings/<set>.npz filter.report=outputs/filters/<set>.json \
        filter.max_z=3 filter.min_consistency=0.5 filter.max_centre_similarity=0.6 \
        filter.identities=10000 filter.images_per_identity=50
    python split_identity_blocks.py <aligned> <dataset> --filter-report outputs/filters/<set>.json
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from dataset_building.filters import filter_from_config


@hydra_app("filter_config")
def main(cfg: DictConfig) -> None:
    """Run :func:`filter_from_config`."""
    filter_from_config(cfg)


if __name__ == "__main__":
    main()
