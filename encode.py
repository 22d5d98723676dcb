"""Embed an aligned face dataset into one embedding file (:func:`embedding.encoding.encode`; configs/encode_config.yaml).

    python encode.py encode.input=outputs/datasets/<model>/<contexts> encode.output=outputs/embeddings/<name>.npz
    python encode.py fr_backend.name=dlib fr_backend.dlib.input=photo ...
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from embedding.encoding import encode

log = logging.getLogger(__name__)


@hydra.main(config_path="configs", config_name="encode_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`encode`; bad input ends with one error line and exit status 1."""
    try:
        encode(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
