"""Embed every face image of a folder (:func:`embedding.encoding.extract_embeddings`; configs/extract_embeddings_config.yaml).

    python extract_face_embeddings_from_dir.py input_dir=data/ffhq_128 output_file=data/embeddings_elasticface_ffhq_128.npz
    python extract_face_embeddings_from_dir.py fr_backend.name=dlib fr_backend.dlib.input=photo output_file=data/embeddings_dlib.npz
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from embedding.encoding import extract_embeddings
from utils.checkpoint import CheckpointError


@hydra.main(config_path="configs", config_name="extract_embeddings_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`extract_embeddings`; errors about inputs end the program with one line."""
    try:
        extract_embeddings(cfg)
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
