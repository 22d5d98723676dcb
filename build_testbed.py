"""Build the testbed training set: DCGAN faces of nobody + their embeddings (configs/testbed_config.yaml, ``build``).

    python build_testbed.py                       # outputs/testbed/data/{train,holdout}/ and *_dlib.npz
    python build_testbed.py build.n_train=500     # a smaller set
"""
import hydra
from omegaconf import DictConfig

from testbed.build import build_testbed
from utils.checkpoint import CheckpointError


@hydra.main(config_path="configs", config_name="testbed_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`build_testbed`; errors about inputs end the program with one line."""
    try:
        build_testbed(cfg)
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
