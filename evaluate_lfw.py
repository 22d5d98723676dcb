"""LFW pairs protocol on an embedding set (:func:`evaluation.report.evaluate_lfw`; configs/evaluate_lfw_config.yaml).

    python evaluate_lfw.py evaluate_lfw.pairs=<lfw>/pairs.txt evaluate_lfw.embeddings=<lfw>.npz
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from evaluation.report import evaluate_lfw


@hydra_app("evaluate_lfw_config")
def main(cfg: DictConfig) -> None:
    """Run :func:`evaluate_lfw`."""
    evaluate_lfw(cfg)


if __name__ == "__main__":
    main()
