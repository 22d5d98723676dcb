"""Faces in, identity embeddings out: the one path that the testbed's training set and its evaluation share.

A face image at the model's resolution (32x32 on the testbed) is enlarged (bicubic) to
``upscale_to`` pixels, MTCNN finds its five landmarks (:class:`alignment.aligner.FaceAligner`), the
face is warped onto the 112x112 ArcFace crop, and the FR backend embeds the crop
(:mod:`embedding.backends`; dlib warps the crop onto its 150x150 chip). Images without a detected
face get no embedding. This is the path of ``align.py`` + ``encode.py``, in memory; using it for the
training contexts and for the generated samples keeps both in one embedding space.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from alignment.aligner import FaceAligner
from embedding.backends import FaceEmbedder

log = logging.getLogger(__name__)


def resize_images(images: np.ndarray | Sequence[np.ndarray], size: int) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, size, size, 3) uint8: bicubic when enlarging, box (area average) when shrinking."""
    out = []
    for image in images:
        if image.shape[0] == size and image.shape[1] == size:
            out.append(np.asarray(image))
            continue
        method = Image.BICUBIC if size > image.shape[0] else Image.BOX
        out.append(np.asarray(Image.fromarray(np.asarray(image)).resize((size, size), method)))
    return np.stack(out)


@dataclass
class FaceEmbeddings:
    """Result of :func:`embed_faces` on B images: which had a face, their (F, D) unit embeddings and crops."""

    detected: np.ndarray  # (B,) bool
    embeddings: np.ndarray  # (F, D) float32, F = detected.sum(), in image order
    crops: np.ndarray  # (F, 112, 112, 3) uint8 ArcFace crops

    @property
    def detected_share(self) -> float:
        """Share of the images in which MTCNN found a face."""
        return float(self.detected.mean()) if len(self.detected) else 0.0


def embed_faces(
    images: np.ndarray | Sequence[np.ndarray],
    aligner: FaceAligner,
    backend: FaceEmbedder,
    upscale_to: int = 128,
) -> FaceEmbeddings:
    """Enlarge, detect, align onto the ArcFace crop and embed B face images.

    Args:
        images: (B, H, W, 3) uint8 RGB faces (e.g. 32x32 samples).
        aligner: MTCNN + warp (its ``pad`` and ``min_face_size`` apply).
        backend: FR model taking 112x112 ArcFace crops (dlib with ``input="arcface_crop"``, iResNet).
        upscale_to: side in pixels the images are enlarged to before detection (MTCNN's smallest face is 20 px).
    Returns:
        :class:`FaceEmbeddings` (embeddings of the detected faces only).
    """
    if len(images) == 0:
        raise ValueError("embed_faces got no images")
    big = resize_images(images, upscale_to)
    crops = aligner.align(list(big), template="arcface", size=112)
    detected = np.array([c is not None for c in crops], dtype=bool)
    kept = [c for c in crops if c is not None]
    if kept:
        embeddings = backend.embed(kept)
    else:
        embeddings = np.zeros((0, backend.embedding_dim), dtype=np.float32)
    return FaceEmbeddings(detected, embeddings, np.stack(kept) if kept else np.zeros((0, 112, 112, 3), np.uint8))
