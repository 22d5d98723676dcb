"""Identity separability of an embedding set (:func:`evaluation.report.evaluate`; configs/evaluate_config.yaml).

    python evaluate.py evaluate.synthetic=outputs/embeddings/<name>.npz evaluate.real=<real>.npz evaluate.output_dir=<dir>
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from evaluation.report import evaluate


@hydra_app("evaluate_config")
def main(cfg: DictConfig) -> None:
    """Run :func:`evaluate`."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
