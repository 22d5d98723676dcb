"""Identity-embedding files: the original formats and our own.

Formats, chosen by the file suffix:

* ``.npz`` (ours, no pickle): ``names`` (N,) str, ``embeddings`` (N, D) float32 and
  optionally ``labels`` (N,) int64.
* ``.pt`` / ``.pth`` (original ``extract_face_embeddings_from_dir.py``): a ``torch.save``d
  dict ``{image stem: float32[D]}``; read with ``weights_only=True``.
* ``.npy``: either the original sampling contexts (``random_synthetic_uniform_15000.npy`` is
  really a ``torch.save``d dict ``{name: float32 ndarray}``, recognised by its zip header and
  read with ``weights_only=True`` admitting only numpy's array types), or a plain (N, D)
  numpy matrix whose names are the row indices (read with ``allow_pickle=False``).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.atomic import atomic_file
from utils.checkpoint import torch_load

SUFFIXES = (".npz", ".pt", ".pth", ".npy")


@dataclass
class EmbeddingSet:
    """``names[i]`` owns ``embeddings[i]`` (N, D) float32; ``labels`` (N,) int64 or None."""

    names: list[str]
    embeddings: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{name: embedding}`` (the layout the original code keeps in memory)."""
        return dict(zip(self.names, self.embeddings))


def _numpy_array_globals() -> list:
    """The numpy types a ``torch.save``d dict of float arrays needs under ``weights_only=True``."""
    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, type(np.dtype(np.float32))]


def _is_torch_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # torch.save's zip container, not numpy's .npy header


def _check(path: Path, names: list[str], embeddings: np.ndarray, labels: np.ndarray | None) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"{path}: embeddings must be a (N, D) matrix, found shape {embeddings.shape}")
    if len(names) != embeddings.shape[0]:
        raise ValueError(f"{path}: {len(names)} names for {embeddings.shape[0]} embeddings")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: names are not unique ({len(names) - len(set(names))} duplicates)")
    if labels is not None and labels.shape != (len(names),):
        raise ValueError(f"{path}: labels must have shape ({len(names)},), found {labels.shape}")
    if not np.isfinite(embeddings).all():
        raise ValueError(f"{path}: embeddings contain NaN or inf")


def save_embeddings(
    path: str | os.PathLike,
    names: list[str],
    embeddings: np.ndarray | torch.Tensor,
    labels: np.ndarray | None = None,
) -> Path:
    """Write an embedding file atomically (temp file + rename); the format follows the suffix.

    Args:
        path: ``.npz`` (ours), ``.pt``/``.pth`` (original dict format) or ``.npy`` (matrix only).
        names: N unique names (image stems or identity ids).
        embeddings: (N, D) float32.
        labels: optional (N,) integer identity labels (``.npz`` only).
    """
    path = Path(path)
    names = [str(n) for n in names]
    embeddings = np.ascontiguousarray(torch.as_tensor(embeddings).detach().cpu().numpy(), dtype=np.float32)
    labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    _check(path, names, embeddings, labels)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown embedding file suffix {path.suffix!r}; expected one of {SUFFIXES}")
    if labels is not None and path.suffix != ".npz":
        raise ValueError(f"{path}: labels can only be stored in our .npz format")
    with atomic_file(path) as f:
        if path.suffix == ".npz":
            arrays = {"names": np.asarray(names, dtype=str), "embeddings": embeddings}
            if labels is not None:
                arrays["labels"] = labels
            np.savez(f, **arrays)
        elif path.suffix == ".npy":  # a plain matrix; the original dict format goes to .pt
            np.save(f, embeddings, allow_pickle=False)
        else:
            torch.save({n: torch.from_numpy(e.copy()) for n, e in zip(names, embeddings)}, f)
    return path


def load_embeddings(path: str | os.PathLike) -> EmbeddingSet:
    """Read any of the supported embedding files (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} does not exist")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # ValueError: an object array (pickle)
            raise ValueError(f"{path} is not a readable .npz embedding file: {err}") from None
        if "embeddings" not in arrays or "names" not in arrays:
            raise ValueError(f"{path}: expected arrays 'names' and 'embeddings', found {sorted(arrays)}")
        names = [str(n) for n in arrays["names"]]
        embeddings = np.asarray(arrays["embeddings"], dtype=np.float32)
        labels = np.asarray(arrays["labels"], dtype=np.int64) if "labels" in arrays else None
    elif path.suffix == ".npy" and not _is_torch_zip(path):
        try:
            embeddings = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path} is not a plain numeric .npy matrix: {err}") from None
        names = [str(i) for i in range(len(embeddings))]
        labels = None
    elif path.suffix in (".pt", ".pth", ".npy"):
        with torch.serialization.safe_globals(_numpy_array_globals()):
            obj = torch_load(path)
        if not isinstance(obj, dict) or not all(torch.is_tensor(v) or isinstance(v, np.ndarray) for v in obj.values()):
            raise ValueError(f"{path}: expected a dict {{image stem: embedding}}, found {type(obj).__name__}")
        names = [str(k) for k in obj]
        vectors = [torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in obj.values()]
        dims = sorted({len(v) for v in vectors})
        if len(dims) > 1:
            raise ValueError(f"{path}: embeddings have different dimensions {dims}; expected one")
        embeddings = torch.stack(vectors).numpy() if vectors else np.zeros((0, 0), np.float32)
        labels = None
    else:
        raise ValueError(f"{path}: unknown embedding file suffix {path.suffix!r}; expected one of {SUFFIXES}")
    _check(path, names, embeddings, labels)
    return EmbeddingSet(names, embeddings, labels)
