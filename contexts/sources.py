"""Identity contexts for sampling: where they come from, the separability filter, the file formats.

* :func:`synthetic_uniform`: ``normalize(randn(n, D))``, uniform on the unit sphere (the paper's
  "synthetic uniform" contexts), seeded.
* :func:`authentic`: the first or a random ``n`` of a real embedding file.
* :func:`from_images`: embed a folder of face images with an FR model (two-stage contexts when the
  folder holds samples of an unconditional model).
* :func:`separability_filter`: greedily keep contexts whose cosine to every kept one is below a
  threshold, with chunked matrix products.

The original's contexts file (``random_synthetic_uniform_15000.npy``) is, despite its suffix, a
``torch.save``d dict ``{str(i): float32 ndarray (D,)}``; :func:`save_original_contexts` writes that
format and :func:`load_contexts` reads it (``weights_only=True`` with only numpy's array types allowed)
as well as every format of :mod:`embedding.files`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from embedding.backends import build_backend
from embedding.files import EmbeddingSet, load_embeddings, save_embeddings
from utils.atomic import write_text_atomic
from utils.checkpoint import save_atomic
from utils.image_io import IMAGE_SUFFIXES, natural_key, read_image

log = logging.getLogger(__name__)

#: ``images (N, H, W, 3) uint8 RGB -> (N, D)`` L2-normalised embeddings.
EmbedFn = Callable[[np.ndarray], np.ndarray]


def synthetic_uniform(n: int, dim: int = 512, seed: int = 0) -> EmbeddingSet:
    """``n`` L2-normalised Gaussian vectors (n, dim) named ``"0" .. "n-1"``, from a seeded CPU generator."""
    if n < 1 or dim < 1:
        raise ValueError(f"synthetic_uniform needs n >= 1 and dim >= 1, found n={n}, dim={dim}")
    generator = torch.Generator().manual_seed(int(seed))
    embeddings = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)
    return EmbeddingSet([str(i) for i in range(n)], embeddings.numpy())


def authentic(path: str | os.PathLike, n: int | None = None, random: bool = False, seed: int = 0) -> EmbeddingSet:
    """The first (or, with ``random``, a seeded random) ``n`` embeddings of a real embedding file, L2-normalised."""
    contexts = load_contexts(path)
    n = len(contexts) if n is None else int(n)
    if not 1 <= n <= len(contexts):
        raise ValueError(f"{path} holds {len(contexts)} embeddings; cannot take n={n}")
    if random:
        index = np.sort(np.random.default_rng(seed).choice(len(contexts), size=n, replace=False))
    else:
        index = np.arange(n)
    return EmbeddingSet([contexts.names[i] for i in index], normalize(contexts.embeddings[index]))


def from_images(image_paths: Sequence[Path], embed: EmbedFn, batch_size: int = 64) -> EmbeddingSet:
    """Embed face images (one context per image, named by the file stem).

    Args:
        image_paths: image files; images of one batch must share a size (aligned crops do).
        embed: FR model, ``(N, H, W, 3) uint8 -> (N, D)``.
        batch_size: images per ``embed`` call.
    """
    if not image_paths:
        raise ValueError("from_images got no image files")
    names = [p.stem for p in image_paths]
    chunks = []
    for start in tqdm(range(0, len(image_paths), batch_size), desc="embedding", unit="batch"):
        batch = [read_image(p) for p in image_paths[start : start + batch_size]]
        shapes = sorted({im.shape for im in batch})
        if len(shapes) > 1:
            raise ValueError(f"images of one batch must share a size (align them first), found {shapes}")
        chunks.append(np.asarray(embed(np.stack(batch)), dtype=np.float32))
    return EmbeddingSet(names, normalize(np.concatenate(chunks)))


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows of (N, D) scaled to unit L2 norm (float32)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} embeddings are all zeros and cannot be normalised")
    return embeddings / norms


def separability_filter(embeddings: np.ndarray, threshold: float, chunk_size: int = 2048) -> np.ndarray:
    """Greedy maximal set of rows whose pairwise cosine similarity is below ``threshold``.

    Rows are visited in order; a row is kept when its cosine to every kept row is ``< threshold``.
    The result is maximal: every dropped row has cosine ``>= threshold`` to some kept row. Work is
    one (chunk, kept) matrix product per chunk plus a (chunk, chunk) product resolved in order.

    Args:
        embeddings: (N, D), L2-normalised rows.
        threshold: cosine similarity bound in [-1, 1].
        chunk_size: rows per matrix product.
    Returns:
        (K,) int64 indices of the kept rows, increasing.
    """
    x = torch.from_numpy(normalize(embeddings))
    kept: list[int] = []
    kept_x = x.new_zeros((0, x.shape[1]))
    for start in range(0, len(x), chunk_size):
        chunk = x[start : start + chunk_size]  # (C, D)
        alive = (chunk @ kept_x.T < threshold).all(dim=1) if len(kept_x) else torch.ones(len(chunk), dtype=torch.bool)
        candidates = alive.nonzero().flatten()
        too_close = (chunk[candidates] @ chunk[candidates].T >= threshold).numpy()  # (c, c)
        chosen: list[int] = []
        for j in range(len(candidates)):
            if not too_close[j, chosen].any():
                chosen.append(j)
        new = candidates[chosen]
        kept.extend((new + start).tolist())
        kept_x = torch.cat([kept_x, chunk[new]])
    return np.asarray(kept, dtype=np.int64)


def load_contexts(path: str | os.PathLike) -> EmbeddingSet:
    """Read contexts from the original ``torch.save``d dict (any suffix) or any :mod:`embedding.files` format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"contexts file {path} does not exist; make one with create_sample_identity_contexts.py")
    return load_embeddings(path)


def save_original_contexts(path: str | os.PathLike, contexts: EmbeddingSet) -> Path:
    """Write the original format: ``torch.save({name: float32 ndarray (D,)})``, read by the original ``sample.py``."""
    return save_atomic({n: np.ascontiguousarray(e, dtype=np.float32) for n, e in zip(contexts.names, contexts.embeddings)}, path)


def contexts_from_config(cfg: DictConfig) -> tuple[Path, Path]:
    """``create_sample_identity_contexts.py``: build, optionally filter, and write ``<name>.npy`` (original) + ``<name>.npz``.

    ``<name>.yaml`` beside them records the config (source, seed, filter), read by :mod:`dataset_building.card`.
    """
    c = cfg.contexts
    n = None if c.n is None else int(c.n)
    if c.source == "synthetic_uniform":
        contexts = synthetic_uniform(n or 15000, int(c.dim), int(c.seed))
    elif c.source == "authentic":
        if c.embeddings_file is None:
            raise ValueError("contexts.source=authentic needs contexts.embeddings_file (an embedding file of real faces)")
        contexts = authentic(c.embeddings_file, n, bool(c.random), int(c.seed))
    elif c.source == "from_images":
        folder = Path(str(c.images_dir)) if c.images_dir is not None else None
        if folder is None or not folder.is_dir():
            raise ValueError(f"contexts.source=from_images needs contexts.images_dir to be a folder of images, found {folder}")
        paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))
        backend = build_backend(c.fr_backend, device=cfg.device)
        contexts = from_images(paths[:n], backend.embed, backend.batch_size)
    else:
        raise ValueError(f"contexts.source must be synthetic_uniform, authentic or from_images, found {c.source!r}")
    if c.separability_threshold is not None:
        keep = separability_filter(contexts.embeddings, float(c.separability_threshold))
        log.info("separability filter (cosine < %s): kept %d of %d contexts", c.separability_threshold, len(keep), len(contexts))
        contexts = EmbeddingSet([contexts.names[i] for i in keep], contexts.embeddings[keep])
    name = c.name or f"random_{c.source}_{len(contexts)}"
    out_dir = Path(c.out_dir)
    original = save_original_contexts(out_dir / f"{name}.npy", contexts)
    ours = save_embeddings(out_dir / f"{name}.npz", contexts.names, contexts.embeddings)
    write_text_atomic(out_dir / f"{name}.yaml", OmegaConf.to_yaml(cfg, resolve=True))  # settings, for dataset cards
    log.info("wrote %d contexts of dimension %d to %s and %s", len(contexts), contexts.dim, original, ours)
    return original, ours
