"""Sample filters: drop outlier images, inconsistent and look-alike identities, cut to N x K (configs/filter_config.yaml).

    python filter_identities.py filter.embeddings=outputs/embeddings/<set>.npz filter.report=outputs/filters/<set>.json \
        filter.max_z=3 filter.min_consistency=0.5 filter.max_centre_similarity=0.6 \
        filter.identities=10000 filter.images_per_identity=50
    python split_identity_blocks.py <aligned> <dataset> --filter-report outputs/filters/<set>.json
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from dataset_building.filters import filter_from_config

log = logging.getLogger(__name__)


@hydra.main(config_path="configs", config_name="filter_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`filter_from_config`; bad input ends with one error line and exit status 1."""
    try:
        filter_from_config(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
