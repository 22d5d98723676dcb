"""The demo's training set: seeded, aligned augmentations of a few real face photos.

Every photo's five MTCNN landmarks are mapped by a similarity transform onto a loose face framing
(the ArcFace template shrunk towards the image centre, like FFHQ's aligned crops), with a random
scale, rotation and shift per copy, then jittered in brightness, contrast and saturation. The
copies of one photo are a pure function of ``(seed, photo stem, copy index)``, so the set is the
same on every run and machine. Horizontal flips are left to the trainer (``training.flip_probability``).

The demo's "identities" are people: ``obama_1.png`` and ``obama_3.png`` are one person, named by
the part of the stem before the last ``_`` (:func:`person_of`).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from alignment.aligner import ARCFACE_TEMPLATE, FaceAligner, similarity_matrix
from embedding.files import EmbeddingSet
from utils.image_io import IMAGE_SUFFIXES, read_image, save_png_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random framing and colour changes of one training copy.

    Args:
        size: output side in pixels (the trainer resizes to ``constants.image_size`` on load).
        face_scale: the ArcFace template is shrunk to this share of the output around its centre
            (1.0 = the tight 112x112 ArcFace crop; ~0.75 frames the whole head).
        scale_jitter: relative random scale, uniform in ``[-j, j]``.
        rotation: random in-plane rotation in degrees, uniform in ``[-r, r]``.
        shift: random shift as a share of ``size``, uniform in ``[-s, s]`` per axis.
        colour: brightness, contrast and saturation factors uniform in ``[1 - c, 1 + c]``.
    """

    size: int = 128
    face_scale: float = 0.75
    scale_jitter: float = 0.06
    rotation: float = 6.0
    shift: float = 0.03
    colour: float = 0.15


def person_of(stem: str) -> str:
    """The person a demo photo shows: ``obama_2`` -> ``obama`` (a stem without ``_`` is its own person)."""
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def copy_seed(seed: int, stem: str, k: int) -> int:
    """Seed of copy ``k`` of photo ``stem``: a hash of the three, independent of the photo order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stem}:{k}".encode()).digest()[:8], "little")


def list_photos(folder: str | os.PathLike) -> list[Path]:
    """The image files of ``folder``, sorted by name; raises when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"demo.faces_dir={folder} is not a folder; expected the demo photos (data/demo/faces)")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise FileNotFoundError(f"demo.faces_dir={folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return photos


def framing_landmarks(aug: Augmentation) -> np.ndarray:
    """(5, 2) target points of an un-jittered copy: the ArcFace template shrunk by ``face_scale`` in a ``size`` frame."""
    centre = np.array([56.0, 56.0])
    return ((ARCFACE_TEMPLATE - centre) * aug.face_scale + centre) * (aug.size / 112.0)


def augment(image: np.ndarray, landmarks: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """One random training copy of a photo.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        landmarks: (5, 2) MTCNN points of its face (left eye, right eye, nose, mouth corners).
        aug: the random ranges.
        rng: generator of this copy.
    Returns:
        (size, size, 3) uint8 RGB.
    """
    size = aug.size
    scale = 1.0 + rng.uniform(-aug.scale_jitter, aug.scale_jitter)
    angle = np.deg2rad(rng.uniform(-aug.rotation, aug.rotation))
    shift = rng.uniform(-aug.shift, aug.shift, size=2) * size
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([size / 2, size / 2])
    target = (framing_landmarks(aug) - centre) @ rotation.T * scale + centre + shift  # (5, 2)
    matrix = similarity_matrix(landmarks, target)
    out = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    brightness, contrast, saturation = rng.uniform(1 - aug.colour, 1 + aug.colour, size=3)
    x = out.astype(np.float32) * brightness
    x = (x - x.mean()) * contrast + x.mean()
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * saturation + grey
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def build_training_images(
    photos: Sequence[Path],
    out_dir: str | os.PathLike,
    aligner: FaceAligner,
    copies: int,
    aug: Augmentation,
    seed: int = 0,
) -> list[Path]:
    """Write ``copies`` augmented copies of every photo as ``<out_dir>/<stem>_<k>.png``.

    Files that exist already are kept (the copies are deterministic), so an interrupted run resumes.
    Raises when MTCNN finds no face in a photo.
    """
    out_dir = Path(out_dir)
    images = [read_image(p) for p in photos]
    detections = aligner.detect(images)
    missing = [p.name for p, d in zip(photos, detections) if d is None]
    if missing:
        raise ValueError(f"MTCNN found no face in the demo photos {missing}; every photo in demo.faces_dir needs one face")
    written = []
    for photo, image, det in zip(photos, images, detections):
        for k in range(copies):
            path = out_dir / f"{photo.stem}_{k:03d}.png"
            if not path.is_file():
                rng = np.random.default_rng(copy_seed(seed, photo.stem, k))
                save_png_atomic(augment(image, det.landmarks, aug, rng), path)
            written.append(path)
    log.info("training set: %d copies of %d photos in %s", len(written), len(photos), out_dir)
    return written


def person_centres(real: EmbeddingSet) -> EmbeddingSet:
    """One unit-length context per person: the normalised mean of that person's photo embeddings.

    Args:
        real: (N, D) unit embeddings named by photo stem.
    Returns:
        (P, D) centres named by person, in sorted name order.
    """
    people = sorted({person_of(n) for n in real.names})
    rows = []
    for person in people:
        mean = real.embeddings[[person_of(n) == person for n in real.names]].mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return EmbeddingSet(people, np.stack(rows).astype(np.float32))
