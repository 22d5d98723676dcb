"""Embed an aligned face dataset into one embedding file (:func:`embedding.encoding.encode`; configs/encode_config.yaml).

    python encode.py encode.input=outputs/datasets/<model>/<contexts> encode.output=outputs/embeddings/<name>.npz
    python encode.py fr_backend.name=dlib fr_backend.dlib.input=photo ...
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from embedding.encoding import encode


@hydra_app("encode_config")
def main(cfg: DictConfig) -> None:
    """Run :func:`encode`."""
    encode(cfg)


if __name__ == "__main__":
    main()
