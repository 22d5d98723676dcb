"""Identity separability of an embedding set (:func:`evaluation.report.evaluate`; configs/evaluate_config.yaml).

    python evaluate.py evaluate.synthetic=outputs/embeddings/<name>.npz evaluate.real=<real>.npz evaluate.output_dir=<dir>
"""
from omegaconf import DictConfig

from evaluation.report import evaluate
from utils.cli import hydra_app


@hydra_app("evaluate_config")
def main(cfg: DictConfig) -> None:
    """Run :func:`evaluate`."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
