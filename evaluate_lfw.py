"""LFW pairs protocol on an embedding set (:func:`evaluation.report.evaluate_lfw`; configs/evaluate_lfw_config.yaml).

    python evaluate_lfw.py evaluate_lfw.pairs=<lfw>/pairs.txt evaluate_lfw.embeddings=<lfw>.npz
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from evaluation.report import evaluate_lfw

log = logging.getLogger(__name__)


@hydra.main(config_path="configs", config_name="evaluate_lfw_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`evaluate_lfw`; bad input ends with one error line and exit status 1."""
    try:
        evaluate_lfw(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
