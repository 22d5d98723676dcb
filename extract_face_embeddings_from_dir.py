"""Embed every face image of a folder (:func:`embedding.encoding.extract_embeddings`; configs/extract_embeddings_config.yaml).

    python extract_face_embeddings_from_dir.py input_dir=data/ffhq_128 output_file=data/embeddings_elasticface_ffhq_128.npz
    python extract_face_embeddings_from_dir.py fr_backend.name=dlib fr_backend.dlib.input=photo output_file=data/embeddings_dlib.npz
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from embedding.encoding import extract_embeddings


@hydra_app("extract_embeddings_config")
def main(cfg: DictConfig) -> None:
    """Run :func:`extract_embeddings`."""
    extract_embeddings(cfg)


if __name__ == "__main__":
    main()
