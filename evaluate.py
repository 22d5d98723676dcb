"""Identity separability of an embedding set (:func:`evaluation.report.evaluate`; configs/evaluate_config.yaml).

    python evaluate.py evaluate.synthetic=outputs/embeddings/<name>.npz evaluate.real=<real>.npz evaluate.output_dir=<dir>
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from evaluation.report import evaluate

log = logging.getLogger(__name__)


@hydra.main(config_path="configs", config_name="evaluate_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`evaluate`; bad input ends with one error line and exit status 1."""
    try:
        evaluate(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
