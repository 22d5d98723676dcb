"""Face images paired with their identity embeddings, matched by file stem, and the step-indexed data order.

An item is addressed by ``(index, flip)``: the horizontal flip of the original's
``RandomHorizontalFlip(0.5)`` is drawn by :class:`StepBatchSampler` together with the data order,
so both are a pure function of ``(seed, step)``. That makes resuming exact, lets DDP ranks split a
global batch, and lets the latent cache store both flips of every image.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from embedding.files import load_embeddings
from utils.image_io import UnreadablePolicy

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_FILL_HINT = (
    "put the FFHQ 128x128 images (ffhq_128) into {images}, then embed them with "
    "`python extract_face_embeddings_from_dir.py input_dir={images} output_file={embeddings}`; "
    "or point paths.data_root / dataset.images_root / dataset.embeddings_file at existing data"
)


class DatasetError(ValueError):
    """The training data is missing, inconsistent or unreadable."""


def _list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_data_paths(images_root: str | os.PathLike, embeddings_file: str | os.PathLike) -> None:
    """Raise a one-line :class:`DatasetError` naming the missing path and how to fill it."""
    hint = _FILL_HINT.format(images=images_root, embeddings=embeddings_file)
    if not Path(images_root).is_dir():
        raise DatasetError(f"image folder {images_root} (dataset.images_root) does not exist: {hint}")
    if not Path(embeddings_file).is_file():
        raise DatasetError(f"embedding file {embeddings_file} (dataset.embeddings_file) does not exist: {hint}")


class FaceEmbeddingDataset(Dataset):
    """Images of ``images_root`` with the embedding of the same stem from ``embeddings_file``.

    Args:
        images_root: folder of face images (searched non-recursively).
        embeddings_file: embedding file read by :func:`embedding.files.load_embeddings` (``.npz`` ours,
            ``.pt`` the original dict).
        image_size: images are resized (bilinear) to ``image_size x image_size`` when they differ.
        allow_unmatched: False (default) stops with an error listing images without embeddings and
            embeddings without images; True trains on the matched pairs and logs the counts.
        on_unreadable: ``skip`` logs the path and substitutes the next readable image (with that image's
            context), ``stop`` raises.
        extensions: image file suffixes to use.

    Items: ``dataset[(index, flip)] -> (x, context)`` with x (3, image_size, image_size) float32 in
    [-1, 1] and context (D,) float32.
    """

    def __init__(
        self,
        images_root: str | os.PathLike,
        embeddings_file: str | os.PathLike,
        image_size: int = 128,
        allow_unmatched: bool = False,
        on_unreadable: str = "skip",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        check_data_paths(images_root, embeddings_file)
        self.images_root = Path(images_root)
        self.image_size = int(image_size)
        suffixes = tuple(e.lower() for e in extensions)
        images = {p.stem: p for p in sorted(self.images_root.iterdir()) if p.suffix.lower() in suffixes}
        embeddings = load_embeddings(embeddings_file)
        by_name = dict(zip(embeddings.names, range(len(embeddings))))
        stems = sorted(set(images) & set(by_name))
        no_embedding = sorted(set(images) - set(by_name))
        no_image = sorted(set(by_name) - set(images))
        if (no_embedding or no_image) and not allow_unmatched:
            raise DatasetError(
                f"{images_root} and {embeddings_file} do not match by file stem: {len(no_embedding)} images without "
                f"an embedding [{_list(no_embedding)}], {len(no_image)} embeddings without an image [{_list(no_image)}]; "
                "re-run extract_face_embeddings_from_dir.py on the folder or set dataset.allow_unmatched=true"
            )
        if no_embedding or no_image:
            logger.warning("using %d matched pairs; ignoring %d images without embedding and %d embeddings without image",
                           len(stems), len(no_embedding), len(no_image))
        if not stems:
            raise DatasetError(f"no image in {images_root} (extensions {suffixes}) has an embedding in {embeddings_file}")
        self.names = stems
        self.paths = [images[s] for s in stems]
        rows = np.asarray([by_name[s] for s in stems])
        self.contexts = torch.from_numpy(np.ascontiguousarray(embeddings.embeddings[rows]))
        self.policy = UnreadablePolicy(on_unreadable, "dataset.on_unreadable")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def context_dim(self) -> int:
        return int(self.contexts.shape[1])

    def read_image(self, index: int) -> torch.Tensor:
        """Image ``index`` as (3, S, S) float32 in [-1, 1]; raises :class:`DatasetError` when unreadable."""
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (self.image_size, self.image_size):
                    img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8).copy()
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DatasetError(f"unreadable image {path}: {type(err).__name__}: {err}") from None
        x = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        return x.mul_(2.0).sub_(1.0)

    def load(self, index: int, flip: bool) -> torch.Tensor:
        """Image ``index`` (flipped left-right when ``flip``), applying the unreadable-image policy."""
        return self.load_item(index, flip)[0]

    def load_item(self, index: int, flip: bool) -> tuple[torch.Tensor, int]:
        """``(x (3, S, S), used)``: image ``index``, or with policy ``skip`` the next readable one.

        ``used`` is the index of the image returned (``index`` unless it was unreadable).
        """
        x, used = self.policy.load(index, len(self), self.read_image, DatasetError, str(self.images_root))
        return (torch.flip(x, dims=[2]) if flip else x), used

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, flip) -> (x (3, S, S) in [-1, 1], context (D,))``: the context of the image actually used."""
        index, flip = item
        x, used = self.load_item(int(index), bool(flip))
        return x, self.contexts[used]


def _generator(seed: int, stream: int, counter: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, stream, counter)``: stream 0 = data order, 1 = diffusion noise."""
    return torch.Generator().manual_seed((seed * 4 + stream) * 2**40 + counter)


def step_generator(seed: int, step: int) -> torch.Generator:
    """Generator for the noise, timesteps and context dropout of the global batch of ``step``."""
    return _generator(seed, 1, step)


class StepBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Endless batches of ``(index, flip)`` starting at ``start_step``; this rank's share of each global batch.

    Epoch ``e`` is a permutation of the dataset and per-item flips drawn from a generator seeded by
    ``(seed, e)``; step ``s`` takes global batch ``s mod steps_per_epoch`` of epoch
    ``s // steps_per_epoch`` (an incomplete last global batch is dropped) and rank ``r`` gets its
    ``r``-th slice. The order therefore depends on ``(seed, step)`` only.

    Args:
        n_items: dataset size.
        batch_size: per-process batch; the global batch is ``batch_size * world_size``.
        flip_probability: chance of a horizontal flip (0.5 in the original).
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, flip_probability: float = 0.5,
                 start_step: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.n_items = n_items
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        if self.global_batch > n_items:
            raise DatasetError(
                f"global batch {self.global_batch} (training.batch_size={batch_size} x {world_size} processes) "
                f"is larger than the dataset ({n_items} images)"
            )
        self.seed, self.flip_probability = seed, flip_probability
        self.start_step, self.rank = start_step, rank
        self.steps_per_epoch = n_items // self.global_batch

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (G,) int64, flips (G,) bool) of the whole global batch of ``step``."""
        g = _generator(self.seed, 0, self.epoch_of(step))
        order = torch.randperm(self.n_items, generator=g)
        flips = torch.rand(self.n_items, generator=g) < self.flip_probability
        i = (step % self.steps_per_epoch) * self.global_batch
        return order[i:i + self.global_batch], flips[i:i + self.global_batch]

    def batch_at(self, step: int) -> list[tuple[int, bool]]:
        """This rank's ``batch_size`` items of ``step``."""
        indices, flips = self.global_batch_at(step)
        part = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return list(zip(indices[part].tolist(), flips[part].tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        step = self.start_step
        while True:
            yield self.batch_at(step)
            step += 1
