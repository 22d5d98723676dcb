"""Embed every face image of a folder: ``python extract_face_embeddings_from_dir.py input_dir=... output_file=...``.

Writes one L2-normalised embedding per image, named by the image's file stem (what the training
dataset matches on), as ``.npz`` (ours) or ``.pt`` (the original ``{stem: float32[D]}`` dict). The
face-recognition model comes from ``fr_backend`` (:func:`utils.fr_backends.build_backend`):
ElasticFace iResNet-100 (512-d) by default, dlib (128-d) for demos. Config:
``configs/extract_embeddings_config.yaml``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils.checkpoint import CheckpointError
from utils.embeddings import save_embeddings
from utils.fr_backends import build_backend

logger = logging.getLogger(__name__)


class ImageFolder(Dataset):
    """``paths[i]`` decoded to an (H, W, 3) uint8 RGB array, or None when unreadable."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        try:
            with Image.open(self.paths[index]) as img:
                return index, np.asarray(img.convert("RGB"), dtype=np.uint8).copy(), ""
        except (OSError, UnidentifiedImageError, ValueError) as err:
            return index, None, f"{type(err).__name__}: {err}"


def list_images(input_dir: Path, extensions: Sequence[str]) -> list[Path]:
    """Sorted image files of ``input_dir``; raises when the folder is missing, empty or has duplicate stems."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input_dir={input_dir} is not a folder; expected a folder of face images")
    suffixes = {e.lower() for e in extensions}
    paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in suffixes)
    if not paths:
        raise FileNotFoundError(f"input_dir={input_dir} holds no image with extensions {sorted(suffixes)}")
    stems = [p.stem for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"input_dir={input_dir}: several images share the stems {duplicates[:5]}; stems name the embeddings")
    return paths


def extract_embeddings(cfg: DictConfig) -> Path:
    """Embed ``cfg.input_dir`` with ``cfg.fr_backend`` and write ``cfg.output_file``; returns its path."""
    if cfg.on_unreadable not in ("skip", "stop"):
        raise ValueError(f"on_unreadable must be 'skip' or 'stop', found {cfg.on_unreadable!r}")
    paths = list_images(Path(cfg.input_dir), cfg.extensions)
    backend = build_backend(OmegaConf.to_container(cfg.fr_backend, resolve=True), device=cfg.device)
    loader = DataLoader(ImageFolder(paths), batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers),
                        collate_fn=list)
    names: list[str] = []
    embeddings: list[np.ndarray] = []
    unreadable: list[str] = []
    for batch in tqdm(loader, desc=f"embedding {cfg.input_dir}", unit="batch"):
        readable = [(i, image) for i, image, _ in batch if image is not None]
        for i, image, reason in batch:
            if image is None:
                if cfg.on_unreadable == "stop":
                    raise ValueError(f"unreadable image {paths[i]} ({reason}); set on_unreadable=skip to leave it out")
                logger.warning("skipping unreadable image %s (%s)", paths[i], reason)
                unreadable.append(str(paths[i]))
        if readable:
            embeddings.append(backend.embed([image for _, image in readable], flip=bool(cfg.flip)))
            names.extend(paths[i].stem for i, _ in readable)
    if not names:
        raise ValueError(f"no image of input_dir={cfg.input_dir} was readable")
    out = save_embeddings(cfg.output_file, names, np.concatenate(embeddings))
    logger.info("wrote %d %d-d embeddings to %s%s", len(names), backend.embedding_dim, out,
                f" ({len(unreadable)} unreadable images skipped)" if unreadable else "")
    return out


@hydra.main(config_path="configs", config_name="extract_embeddings_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`extract_embeddings`; errors about inputs end the program with one line."""
    try:
        extract_embeddings(cfg)
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
