"""Build the testbed: seeded DCGAN faces of nobody, embedded, as a normal ``dataset=`` folder + embedding file.

``python build_testbed.py`` (``configs/testbed_config.yaml``, section ``build``) writes into
``build.output_dir``::

    train/<seed>.png          n_train faces at image_size (32x32), face i drawn from latent seed i
    train_<backend>.npz       their identity embeddings (names = file stems)
    holdout/<seed>.png        n_holdout further faces from seeds holdout_seed_start, ... (never trained on)
    holdout_<backend>.npz
    build_report.json         counts, seeds without a detected face, embedding statistics

A face is kept when MTCNN finds it (see :mod:`testbed.faces`); seeds are visited in order until a
split has its count, so the set is a pure function of the settings. Work is done in chunks of
seeds; each finished chunk leaves ``.parts/<split>_<k>.npz``, so an interrupted build resumes with
the next chunk, and every file is written under a temporary name and renamed.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from alignment.aligner import FaceAligner
from diffusion.generation import to_uint8
from embedding.backends import FaceEmbedder, backend_settings, build_backend
from embedding.files import EmbeddingSet, load_embeddings, save_embeddings
from models.dcgan import DCGANGenerator, generate_faces, load_dcgan_generator
from testbed.faces import embed_faces, resize_images
from testbed.settings import check_testbed_settings
from utils.atomic import write_json_atomic
from utils.config import resolve_device
from utils.image_io import save_png_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSpec:
    """One split of the testbed: ``n`` kept faces, searched from latent seed ``seed_start`` upwards."""

    name: str
    n: int
    seed_start: int


def face_name(seed: int) -> str:
    """File stem of the face from latent ``seed``: ``"%07d"``."""
    return f"{seed:07d}"


def _chunk_images_present(part: Path, images_dir: Path, needed: int) -> bool:
    """Whether the first ``needed`` faces of a finished chunk still have their PNG (a smaller earlier build
    removed the faces it did not need from its last chunk)."""
    return all((images_dir / f"{name}.png").is_file() for name in load_embeddings(part).names[:needed])


def build_split(
    spec: SplitSpec,
    out_dir: Path,
    generator: DCGANGenerator,
    aligner: FaceAligner,
    backend: FaceEmbedder,
    backend_name: str,
    image_size: int = 32,
    chunk: int = 256,
    upscale_to: int = 128,
) -> dict:
    """Generate, filter, embed and write one split (resumable by chunks); returns its summary.

    Args:
        spec: split name, number of faces and first seed.
        out_dir: the testbed folder (``<out_dir>/<name>/`` and ``<out_dir>/<name>_<backend>.npz``).
        image_size: side of the stored training images (the diffusion model's resolution).
        chunk: seeds per chunk (generation, detection and embedding batch; the resume unit).
    """
    if spec.n < 1 or chunk < 1:
        raise ValueError(f"split {spec.name}: n and chunk must be >= 1, found n={spec.n}, chunk={chunk}")
    images_dir, parts_dir = out_dir / spec.name, out_dir / ".parts"
    final = out_dir / f"{spec.name}_{backend_name}.npz"
    names: list[str] = []
    rows: list[np.ndarray] = []
    missed: list[int] = []
    k = 0
    while len(names) < spec.n:
        seeds = list(range(spec.seed_start + k * chunk, spec.seed_start + (k + 1) * chunk))
        part = parts_dir / f"{spec.name}_{k}.npz"
        if not part.is_file() or not _chunk_images_present(part, images_dir, spec.n - len(names)):
            faces = resize_images(to_uint8(generate_faces(generator, seeds)), image_size)  # (chunk, S, S, 3)
            result = embed_faces(faces, aligner, backend, upscale_to)
            kept = [s for s, d in zip(seeds, result.detected) if d]
            for s, d, face in zip(seeds, result.detected, faces):
                if d:
                    save_png_atomic(face, images_dir / f"{face_name(s)}.png")
            save_embeddings(part, [face_name(s) for s in kept], result.embeddings)
            log.info("%s chunk %d: seeds %d..%d, %d faces detected", spec.name, k, seeds[0], seeds[-1], len(kept))
        done = load_embeddings(part)
        names += done.names
        rows.append(done.embeddings)
        missed += sorted(set(seeds) - {int(n) for n in done.names})
        k += 1
    embeddings = np.concatenate(rows)
    for extra in names[spec.n :]:  # the last chunk may hold more faces than the split needs
        (images_dir / f"{extra}.png").unlink(missing_ok=True)
    last_seed = int(names[spec.n - 1])
    missed = [s for s in missed if s < last_seed]
    names, embeddings = names[: spec.n], embeddings[: spec.n]
    save_embeddings(final, names, embeddings)
    sims = embeddings @ embeddings.T
    upper = np.triu_indices(len(names), k=1)
    summary = {
        "n": len(names), "seeds": [spec.seed_start, last_seed], "no_face_seeds": missed,
        "detected_share": len(names) / (len(names) + len(missed)), "images": str(images_dir),
        "embeddings": str(final), "pairwise_cos_mean": float(sims[upper].mean()) if len(names) > 1 else None,
        "pairwise_cos_std": float(sims[upper].std()) if len(names) > 1 else None,
    }
    log.info("%s: %d faces in %s (%d seeds without a face), embeddings %s", spec.name, len(names), images_dir,
             len(missed), final)
    return summary


def build_testbed(cfg: DictConfig) -> dict:
    """``build_testbed.py``: both splits of ``cfg.build`` and ``build_report.json``; returns the report."""
    check_testbed_settings(cfg)
    b = cfg.build
    out_dir = Path(b.output_dir)
    if int(b.holdout_seed_start) < int(b.n_train):
        raise ValueError(f"build.holdout_seed_start={b.holdout_seed_start} must lie beyond the training seeds "
                         f"(n_train={b.n_train} and the seeds without a face): use e.g. 1000000")
    device = resolve_device(cfg.device)
    backend_name = backend_settings(cfg.fr_backend)["name"]
    generator = load_dcgan_generator(b.dcgan_weights, device)
    aligner = FaceAligner(device=device, min_face_size=int(b.min_face_size), pad=float(b.detect_pad))
    backend = build_backend(cfg.fr_backend, device=device)
    splits = [SplitSpec("train", int(b.n_train), 0), SplitSpec("holdout", int(b.n_holdout), int(b.holdout_seed_start))]
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in b.items()}, "fr_backend": backend_name}
    for spec in splits:
        if spec.name == "holdout" and spec.seed_start <= report["train"]["seeds"][1]:
            raise ValueError(f"build.holdout_seed_start={spec.seed_start} overlaps the training seeds (up to "
                             f"{report['train']['seeds'][1]}); use e.g. 1000000")
        report[spec.name] = build_split(spec, out_dir, generator, aligner, backend, backend_name, int(b.image_size),
                                        int(b.chunk), int(b.upscale_to))
    write_json_atomic(out_dir / "build_report.json", report)
    return report


def load_split(out_dir: str | os.PathLike, split: str, backend_name: str = "dlib") -> EmbeddingSet:
    """The embeddings of a built split (``<out_dir>/<split>_<backend>.npz``), with a hint when missing."""
    path = Path(out_dir) / f"{split}_{backend_name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build the testbed first with `python build_testbed.py`")
    return load_embeddings(path)
