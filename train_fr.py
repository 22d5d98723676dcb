"""Train a face-recognition backbone (iResNet + margin head) on class folders (configs/fr_train_config.yaml).

    python train_fr.py data.root=<class folders> eval.bin_dir=<folder with lfw.bin, ...> [fr/head=arcface ...]
    torchrun --standalone --nproc_per_node=8 train_fr.py data.root=... train.batch_size=32
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from face_recognition_training.train import train


@hydra_app("fr_train_config")
def main(cfg: DictConfig) -> None:
    """Run (or resume) :func:`face_recognition_training.train.train` in ``cfg.train.output_dir``."""
    train(cfg)


if __name__ == "__main__":
    main()
