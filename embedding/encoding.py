"""Images -> embedding files with a face-recognition backend (:mod:`embedding.backends`).

* :func:`extract_embeddings` (``extract_face_embeddings_from_dir.py``): one embedding per image of
  a flat folder, named by the file stem (what the training dataset matches on), written as
  ``.npz`` (ours) or ``.pt`` (the original ``{stem: float32[D]}`` dict). Unreadable images are
  skipped (and logged) or stop the run, per ``on_unreadable``.
* :func:`encode` / :func:`encode_dataset` (``encode.py``): an aligned dataset in class folders,
  identity blocks ``<root>/<identity>.grid<r>x<c>.png`` (or original blocks with ``tile_size``),
  or single image files, into one ``.npz`` with ``names`` (``<identity>/<image stem>``,
  ``<identity>/<tile index>`` or ``<stem>``), ``embeddings`` (N, D) float32 and ``labels`` (N,)
  identity indices in natural name order; or a ``.pt`` dict without labels. Resumable: identities
  are embedded in shards of ``identities_per_shard``, each written atomically to
  ``<output>.shards/``; a restart skips finished shards. The shard folder remembers the input
  list and settings and refuses to mix runs; it is removed after the merge unless ``keep_shards``.
  Identity and image names must be single visible file names (:func:`utils.names.check_name`): they
  name the identities of the embedding file, which sample.py may later write files for.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from embedding.backends import FaceEmbedder, backend_settings, build_backend
from embedding.files import load_embeddings, save_embeddings
from utils.atomic import write_json_atomic
from utils.image_io import (
    BLOCK_PATTERN,
    IMAGE_SUFFIXES,
    discover_identities,
    folder_images,
    read_identity,
)
from utils.names import check_names
from utils.settings import Choice, Number, check_settings

log = logging.getLogger(__name__)


def backend_rules(key: str) -> tuple[Number, ...]:
    """Start-up checks of an ``fr_backend`` section at ``key`` (``fr_backend``, ``contexts.fr_backend``)."""
    return (
        Number(f"{key}.batch_size", low=1, high=65_536, integer=True),
        Number(f"{key}.iresnet.num_features", low=1, high=8192, integer=True),
        Number(f"{key}.dlib.min_face_size", low=1, high=4096, integer=True),
    )


#: What ``extract_face_embeddings_from_dir.py`` checks before any work.
EXTRACT_SETTINGS = (
    *backend_rules("fr_backend"),
    Number("batch_size", low=1, high=65_536, integer=True),
    Number("num_workers", low=0, high=256, integer=True),
    Choice("flip", (True, False)),
    Choice("on_unreadable", ("skip", "stop")),
)
#: What ``encode.py`` checks before any work.
ENCODE_SETTINGS = (
    *backend_rules("fr_backend"),
    Number("encode.tile_size", low=1, high=65_536, integer=True, optional=True),
    Choice("encode.flip", (True, False)),
    Number("encode.identities_per_shard", low=1, high=10**7, integer=True),
    Choice("encode.keep_shards", (True, False)),
)


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
    duplicates = sorted(stem for stem, count in Counter(p.stem for p in paths).items() if count > 1)
    if duplicates:
        raise ValueError(f"input_dir={input_dir}: several images share the stems {duplicates[:5]}; stems name the embeddings")
    return paths


def extract_embeddings(cfg: DictConfig) -> Path:
    """Embed ``cfg.input_dir`` with ``cfg.fr_backend`` and write ``cfg.output_file``; returns its path."""
    check_settings(cfg, EXTRACT_SETTINGS)
    paths = list_images(Path(cfg.input_dir), cfg.extensions)
    backend = build_backend(cfg.fr_backend, device=cfg.device)
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
                log.warning("skipping unreadable image %s (%s)", paths[i], reason)
                unreadable.append(str(paths[i]))
        if readable:
            embeddings.append(backend.embed([image for _, image in readable], flip=bool(cfg.flip)))
            names.extend(paths[i].stem for i, _ in readable)
    if not names:
        raise ValueError(f"no image of input_dir={cfg.input_dir} was readable")
    out = save_embeddings(cfg.output_file, names, np.concatenate(embeddings))
    log.info("wrote %d %d-d embeddings to %s%s", len(names), backend.embedding_dim, out,
             f" ({len(unreadable)} unreadable images skipped)" if unreadable else "")
    return out



def list_identities(root: str | os.PathLike, tile_size: int | None = None) -> dict[str, Path]:
    """Identity -> source for a dataset folder, or ``{stem: file}`` for a single image file.

    Raises one line for a missing input, an input without images, or an empty class folder.
    """
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"encode.input={root} is a file but not an image ({', '.join(IMAGE_SUFFIXES)})")
        return {root.stem: root}
    if not root.is_dir():
        raise FileNotFoundError(f"encode.input={root} does not exist")
    empty = [
        p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and not folder_images(p)
    ]
    if empty:
        raise ValueError(f"encode.input={root}: empty identity: class folder(s) {empty[:5]} hold no images")
    sources = discover_identities(root)
    if not sources:
        raise ValueError(f"encode.input={root} holds no images, identity blocks or class folders")
    return sources


def _read(identity: str, source: Path, tile_size: int | None) -> tuple[list[str], np.ndarray]:
    """Names and (n, H, W, 3) uint8 images of one identity."""
    images = read_identity(source, tile_size)
    if len(images) == 0:
        raise ValueError(f"{source}: empty identity {identity!r}: no face tiles")
    if source.is_dir():
        stems = [p.stem for p in folder_images(source)]
        check_names(stems, f"image name in {source}")
        names = [f"{identity}/{stem}" for stem in stems]
    elif tile_size is None and not BLOCK_PATTERN.match(source.name):
        names = [identity]  # a single image file
    else:
        names = [f"{identity}/{k}" for k in range(len(images))]
    return names, images


def _fingerprint(identities: list[str], settings: Mapping[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(identities).encode()).hexdigest()
    return {"n_identities": len(identities), "identities_sha256": digest, **settings}


def _prepare_shard_dir(shard_dir: Path, fingerprint: dict[str, Any]) -> None:
    manifest = shard_dir / "manifest.json"
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{manifest} is not the JSON manifest encode.py writes ({err}); delete {shard_dir} "
                             "to start over") from None
        if found != fingerprint:
            changed = sorted(k for k in set(found) | set(fingerprint) if found.get(k) != fingerprint.get(k))
            raise ValueError(
                f"{shard_dir} holds shards of a different run (differs in {changed}); delete it to start over"
            )
        return
    write_json_atomic(manifest, fingerprint, indent=1)


def encode_dataset(
    root: str | os.PathLike,
    output: str | os.PathLike,
    backend: FaceEmbedder,
    *,
    tile_size: int | None = None,
    flip: bool = False,
    identities_per_shard: int = 100,
    keep_shards: bool = False,
    backend_id: str = "",
) -> Path:
    """Embed every image of ``root`` and write ``output`` (``.npz`` or ``.pt``).

    Args:
        root: class folders, identity blocks, single image files, or one image file.
        output: embedding file; if it exists already, nothing is done.
        backend: any :class:`embedding.backends.FaceEmbedder` (unit-norm embeddings).
        tile_size: tile side of original blocks without a ``.grid`` tag (None: ours / no blocks).
        flip: flip-sum test-time augmentation.
        identities_per_shard: identities per resumable shard.
        keep_shards: keep ``<output>.shards/`` after the merge.
        backend_id: description of the backend stored in the shard manifest (a restart with another
            backend is refused).
    Returns:
        ``output`` as a Path.
    """
    output = Path(output)
    if output.suffix not in (".npz", ".pt", ".pth"):
        raise ValueError(f"encode.output={output} must end in .npz (ours, with labels) or .pt (original dict)")
    if output.is_file():
        log.info("%s exists; nothing to encode (delete it to re-encode)", output)
        return output
    if identities_per_shard < 1:
        raise ValueError(f"encode.identities_per_shard must be >= 1, found {identities_per_shard}")
    sources = list_identities(root, tile_size)
    identities = list(sources)
    check_names(identities, f"identity name in encode.input={root}")
    shard_dir = output.with_name(output.name + ".shards")
    settings = {
        "root": str(Path(root).resolve()),
        "tile_size": tile_size,
        "flip": flip,
        "identities_per_shard": identities_per_shard,
        "backend": backend_id,
    }
    _prepare_shard_dir(shard_dir, _fingerprint(identities, settings))
    starts = range(0, len(identities), identities_per_shard)
    shard_paths = [shard_dir / f"shard_{k:06d}.npz" for k in range(len(starts))]
    todo = [(k, s) for k, s in enumerate(starts) if not shard_paths[k].is_file()]
    if len(todo) < len(starts):
        log.info("resuming: %d of %d shards already done in %s", len(starts) - len(todo), len(starts), shard_dir)
    for k, start in tqdm(todo, desc="encode shards", unit="shard"):
        names: list[str] = []
        labels: list[int] = []
        embeddings: list[np.ndarray] = []
        for label in range(start, min(start + identities_per_shard, len(identities))):
            identity = identities[label]
            id_names, images = _read(identity, sources[identity], tile_size)
            embeddings.append(backend.embed(list(images), flip=flip))  # (n, D)
            names += id_names
            labels += [label] * len(id_names)
        save_embeddings(shard_paths[k], names, np.concatenate(embeddings), np.asarray(labels, dtype=np.int64))
    parts = [load_embeddings(p) for p in shard_paths]
    dims = sorted({part.dim for part in parts})
    if len(dims) > 1:
        raise ValueError(
            f"{shard_dir}: shards have embeddings of different dimensions {dims}; delete the folder and re-encode"
        )
    all_names = [n for part in parts for n in part.names]
    all_embeddings = np.concatenate([part.embeddings for part in parts])
    all_labels = np.concatenate([part.labels for part in parts]) if output.suffix == ".npz" else None
    save_embeddings(output, all_names, all_embeddings, all_labels)
    log.info("wrote %s: %d embeddings of %d identities, %d-d", output, len(all_names), len(identities), dims[0])
    if not keep_shards:
        shutil.rmtree(shard_dir)
    return output


def encode(cfg: DictConfig) -> Path:
    """``encode.py``: build the backend ``cfg.fr_backend.name`` on ``cfg.device`` and run :func:`encode_dataset`."""
    check_settings(cfg, ENCODE_SETTINGS)
    e = cfg.encode
    settings = backend_settings(cfg.fr_backend)
    backend = build_backend(settings, device=cfg.device)
    return encode_dataset(
        e.input,
        e.output,
        backend,
        tile_size=e.tile_size,
        flip=bool(e.flip),
        identities_per_shard=int(e.identities_per_shard),
        keep_shards=bool(e.keep_shards),
        backend_id=json.dumps({k: v for k, v in settings.items() if k != "batch_size"}, sort_keys=True),
    )
