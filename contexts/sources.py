"""Identity contexts for sampling: where they come from, the separability filter, the file formats.

* :func:`synthetic_uniform`: ``normalize(randn(n, D))``, uniform on the unit sphere (the paper's
  "synthetic uniform" contexts), seeded.
* :func:`authentic`: the first or a random ``n`` of a real embedding file.
* :func:`fitted_gaussian`: ``normalize(mu + sum_k sqrt(lambda_k) z_k u_k)``, a Gaussian with the mean
  and (principal-component) covariance of a training embedding set, seeded: identity vectors of
  nobody that lie where the training identities lie (Vec2Face samples its identity vectors so).
  FR spaces such as dlib's are not centred (two people score ~0.8), so uniform vectors are far
  from every training context.
* :func:`from_images`: embed a folder of face images with an FR model (two-stage contexts when the
  folder holds samples of an unconditional model).
* :func:`separability_filter` (from :mod:`embedding.similarity`, re-exported here): greedily keep
  contexts whose cosine to every kept one is below a threshold, with chunked matrix products.

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
from embedding.encoding import backend_rules
from embedding.files import EmbeddingSet, load_embeddings, save_embeddings
from embedding.similarity import separability_filter
from utils.atomic import write_text_atomic
from utils.checkpoint import save_atomic
from utils.image_io import IMAGE_SUFFIXES, natural_key, read_image
from utils.settings import Choice, Number, check_settings

log = logging.getLogger(__name__)

#: ``images (N, H, W, 3) uint8 RGB -> (N, D)`` L2-normalised embeddings.
EmbedFn = Callable[[np.ndarray], np.ndarray]

#: What ``create_sample_identity_contexts.py`` checks before any work.
SETTINGS = (
    Number("contexts.n", low=1, high=10**7, integer=True, optional=True),
    Number("contexts.dim", low=1, high=8192, integer=True),
    Number("contexts.seed", low=0, integer=True),
    Choice("contexts.random", (True, False)),
    Number("contexts.separability_threshold", low=-1, high=1, optional=True),
    *backend_rules("contexts.fr_backend"),
)


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


def fitted_gaussian(
    path: str | os.PathLike, n: int, seed: int = 0, components: int | None = None, spread: float = 1.0
) -> EmbeddingSet:
    """``n`` unit vectors from a Gaussian fitted to the embeddings in ``path``, named ``"0" .. "n-1"``.

    The L2-normalised embeddings e_i (N, D) give the mean ``mu`` and the covariance
    ``Sigma = sum_i (e_i - mu)(e_i - mu)^T / (N - 1) = U diag(lambda) U^T``. A context is
    ``c = normalize(mu + spread * sum_{k < K} sqrt(lambda_k) z_k u_k)`` with ``z ~ N(0, I_K)`` over the
    ``K = components`` largest eigenvalues (all D when None). ``E|mu + U z'|^2 = |mu|^2 + tr(Sigma) ~ 1``
    for unit data, so the final normalisation is a small correction. The eigenvectors come from float64
    ``numpy.linalg.eigh``; ``z`` from a seeded CPU ``torch.Generator`` (as :func:`synthetic_uniform`).

    Args:
        path: embedding file of the training faces (any :func:`load_contexts` format), N >= 2.
        n: contexts to draw.
        seed: seed of ``z``.
        components: K principal components kept (1..D), None = all.
        spread: scale of the deviation from the mean (1 = the fitted covariance; < 1 nearer the mean).
    """
    if n < 1:
        raise ValueError(f"fitted_gaussian needs n >= 1, found n={n}")
    if not np.isfinite(spread) or spread < 0:
        raise ValueError(f"contexts.spread must be a finite number >= 0, found {spread}")
    data = load_contexts(path)
    if len(data) < 2:
        raise ValueError(f"{path} holds {len(data)} embedding(s); fitting a Gaussian needs at least 2")
    e = normalize(data.embeddings).astype(np.float64)  # (N, D)
    k = data.dim if components is None else int(components)
    if not 1 <= k <= data.dim:
        raise ValueError(f"contexts.pca_components must be in [1, {data.dim}] for {path}, found {components}")
    mu = e.mean(axis=0)  # (D,)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(e, rowvar=False))  # ascending
    scales = np.sqrt(np.clip(eigenvalues[::-1][:k], 0.0, None))  # (K,) largest first
    basis = eigenvectors[:, ::-1][:, :k]  # (D, K)
    z = torch.randn(n, k, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64).numpy()
    contexts = mu + spread * (z * scales) @ basis.T  # (n, D)
    return EmbeddingSet([str(i) for i in range(n)], normalize(contexts))


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


def load_contexts(path: str | os.PathLike) -> EmbeddingSet:
    """Read contexts from the original ``torch.save``d dict (any suffix) or any :mod:`embedding.files` format.

    A missing file or one without any context raises one line naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"contexts file {path} does not exist; make one with create_sample_identity_contexts.py")
    contexts = load_embeddings(path)
    if len(contexts) == 0:
        raise ValueError(f"contexts file {path} holds no contexts; expected at least one identity embedding")
    return contexts


def save_original_contexts(path: str | os.PathLike, contexts: EmbeddingSet) -> Path:
    """Write the original format: ``torch.save({name: float32 ndarray (D,)})``, read by the original ``sample.py``."""
    return save_atomic({n: np.ascontiguousarray(e, dtype=np.float32) for n, e in zip(contexts.names, contexts.embeddings)}, path)


def contexts_from_config(cfg: DictConfig) -> tuple[Path, Path]:
    """``create_sample_identity_contexts.py``: build, optionally filter, and write ``<name>.npy`` (original) + ``<name>.npz``.

    ``<name>.yaml`` beside them records the config (source, seed, filter), read by :mod:`dataset_building.card`.
    """
    check_settings(cfg, SETTINGS)
    c = cfg.contexts
    n = None if c.n is None else int(c.n)
    if c.source == "synthetic_uniform":
        contexts = synthetic_uniform(n or 15000, int(c.dim), int(c.seed))
    elif c.source == "authentic":
        if c.embeddings_file is None:
            raise ValueError("contexts.source=authentic needs contexts.embeddings_file (an embedding file of real faces)")
        contexts = authentic(c.embeddings_file, n, bool(c.random), int(c.seed))
    elif c.source == "fitted_gaussian":
        if c.embeddings_file is None:
            raise ValueError("contexts.source=fitted_gaussian needs contexts.embeddings_file (the training embeddings to fit)")
        contexts = fitted_gaussian(c.embeddings_file, n or 15000, int(c.seed),
                                   None if c.pca_components is None else int(c.pca_components), float(c.spread))
    elif c.source == "from_images":
        folder = Path(str(c.images_dir)) if c.images_dir is not None else None
        if folder is None or not folder.is_dir():
            raise ValueError(f"contexts.source=from_images needs contexts.images_dir to be a folder of images, found {folder}")
        paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))
        if not paths:
            raise ValueError(f"contexts.images_dir={folder} holds no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
        backend = build_backend(c.fr_backend, device=cfg.device)
        contexts = from_images(paths[:n], backend.embed, backend.batch_size)
    else:
        raise ValueError(f"contexts.source must be synthetic_uniform, fitted_gaussian, authentic or from_images, "
                         f"found {c.source!r}")
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
