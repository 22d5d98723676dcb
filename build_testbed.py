"""Build the testbed training set: DCGAN faces of nobody + their embeddings (configs/testbed_config.yaml, ``build``).

    python build_testbed.py                       # outputs/testbed/data/{train,holdout}/ and *_dlib.npz
    python build_testbed.py build.n_train=500     # a smaller set
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from testbed.build import build_testbed


@hydra_app("testbed_config")
def main(cfg: DictConfig) -> None:
    """Build (or resume building) the faces and embeddings under ``cfg.build.output_dir``."""
    build_testbed(cfg)


if __name__ == "__main__":
    main()
