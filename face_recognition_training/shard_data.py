"""FR training data from shards, and the choice of format (:func:`build_training_data`).

* :class:`RecordDataset`: ``train.rec`` + ``train.idx`` + ``property`` (``export_dataset.py
  export.format=rec`` or any insightface set), random access through the index, labels from the
  record headers.
* :class:`TarShardStream`: ``shard-<s>.tar`` + ``export_summary.json`` (``export.format=webdataset``),
  streamed with bounded memory: per epoch a seeded permutation of the shards is dealt to the ranks,
  then to the ``DataLoader`` workers; each worker shuffles its samples through a seeded buffer.

:func:`build_training_data` picks one by ``data.format`` (``auto``: what ``data.root`` holds) and
returns it with its loader (:class:`~face_recognition_training.dataset.EpochLoader` or
:class:`StreamLoader`, the same interface).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from dataset_building.recordio import RecordReader, read_property, unpack
from dataset_building.webdataset import image_and_label, iter_samples
from face_recognition_training.dataset import (
    ClassFolderDataset,
    EpochLoader,
    build_transform,
    decode_image,
)

log = logging.getLogger(__name__)

FORMATS = ("auto", "folders", "rec", "webdataset")
SUMMARY = "export_summary.json"


def _read_summary(root: Path) -> dict | None:
    path = root / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def _check_limits(root: Path, fmt: str, width: int | None, depth: int | None, num_classes: int,
                  summary: dict | None) -> None:
    """Shards hold what the export selected: ``data.width``/``data.depth`` may only be at least as large."""
    fix = "select at export (export.identities / export.images_per_identity) or set data.width=0 data.depth=0"
    if width and width < num_classes:
        raise ValueError(f"data.width={width} but {root} ({fmt}) holds {num_classes} identities; shards are read "
                         f"whole: {fix}")
    if depth:
        if summary is None:
            log.warning("data.depth=%d cannot be checked for %s (no %s); every image is used", depth, root, SUMMARY)
        elif depth < summary["images_per_identity"]["max"]:
            raise ValueError(f"data.depth={depth} but {root} ({fmt}) holds up to "
                             f"{summary['images_per_identity']['max']} images per identity; shards are read whole: "
                             f"{fix}")


class RecordDataset(Dataset):
    """insightface RecordIO (``root/train.rec``, ``train.idx``, ``property``), random access via the index.

    Image records are those ``arcface_torch`` uses (keys ``1 .. header.label[0] - 1`` after a header
    record, else every key), in file order; C comes from ``property``. ``width``/``depth`` only
    check that the file holds no more than they allow (see :func:`_check_limits`).
    """

    def __init__(self, root: str | os.PathLike, width: int | None = None, depth: int | None = None,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, image_size: int = 112) -> None:
        self.root = Path(root)
        for name in ("train.rec", "train.idx", "property"):
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"{self.root / name} does not exist (a RecordIO training set is a folder "
                                        "with train.rec, train.idx and property)")
        self.reader = RecordReader(self.root / "train.rec", self.root / "train.idx")
        self.keys = self.reader.image_keys()
        self.num_classes = read_property(self.root / "property")[0]
        _check_limits(self.root, "rec", width, depth, self.num_classes, _read_summary(self.root))
        self.transform, self.image_size = transform, image_size

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image, int]:
        """``(image, label)`` of the ``index``-th image record: image (3, H, W) after the transform."""
        key = self.keys[index]
        header, data = unpack(self.reader.read(key))
        img = decode_image(data, self.image_size, f"{self.root / 'train.rec'} key {key}")
        return (self.transform(img) if self.transform is not None else img), int(header.label)


class TarShardStream(IterableDataset):
    """WebDataset tar shards listed in ``root/export_summary.json``, streamed with bounded memory.

    Per epoch, shard order is a permutation seeded by (seed, epoch); rank r of R takes every R-th
    shard of it, worker w of W every W-th of those. A worker keeps at most ``shuffle_buffer``
    encoded samples and yields a random one (its own RNG, seeded by (seed, epoch, rank, worker))
    each time the buffer is full. ``len()`` counts the images of all ranks.
    """

    def __init__(self, root: str | os.PathLike, width: int | None = None, depth: int | None = None,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, image_size: int = 112, *,
                 shuffle_buffer: int = 10_000, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.root = Path(root)
        summary = _read_summary(self.root)
        if summary is None or summary.get("format") != "webdataset":
            raise FileNotFoundError(f"{self.root / SUMMARY} is missing or not a webdataset export (tar shards are "
                                    "read through the summary export_dataset.py writes)")
        if shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, found {shuffle_buffer}")
        self.shards = [(self.root / s["file"], int(s["images"])) for s in summary["shards"]]
        self.num_classes = int(summary["num_classes"])
        _check_limits(self.root, "webdataset", width, depth, self.num_classes, summary)
        self.transform, self.image_size, self.shuffle_buffer = transform, image_size, shuffle_buffer
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def __len__(self) -> int:
        return sum(n for _, n in self.shards)

    def assignment(self, epoch: int, num_workers: int) -> list[list[list[int]]]:
        """``[rank][worker] -> shard indices`` of ``epoch`` (num_workers 0 counts as one stream)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        workers = max(1, num_workers)
        ranks = [order[r :: self.world_size] for r in range(self.world_size)]
        return [[shards[w::workers].tolist() for w in range(workers)] for shards in ranks]

    def __iter__(self) -> Iterator[tuple[torch.Tensor | Image.Image, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        buffer: list[tuple[bytes, int, str]] = []
        for s in self.assignment(self.epoch, workers)[self.rank][worker]:
            path = self.shards[s][0]
            for key, fields in iter_samples(path):
                buffer.append((*image_and_label(key, fields, str(path)), f"{path} sample {key}"))
                if len(buffer) >= self.shuffle_buffer:
                    j = int(rng.integers(len(buffer)))
                    buffer[j], buffer[-1] = buffer[-1], buffer[j]
                    yield self._sample(*buffer.pop())
        for j in rng.permutation(len(buffer)):
            yield self._sample(*buffer[j])

    def _sample(self, data: bytes, label: int, where: str) -> tuple[torch.Tensor | Image.Image, int]:
        img = decode_image(data, self.image_size, where)
        return (self.transform(img) if self.transform is not None else img), label


class StreamLoader:
    """A ``DataLoader`` over a :class:`TarShardStream` with :class:`EpochLoader`'s interface.

    Workers batch their own streams (``drop_last``), so rank r can yield ``sum_w floor(n_rw / B)``
    batches in an epoch; every rank stops after the smallest such number over the ranks, so all
    ranks take the same number of steps. ``len()`` is that number for the epoch last set up.
    """

    def __init__(self, dataset: TarShardStream, batch_size: int, *, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {batch_size}")
        self.dataset, self.batch_size, self.num_workers, self.seed = dataset, batch_size, num_workers, seed
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                                 drop_last=True, generator=self.generator, persistent_workers=False)
        self.current = 0
        if len(self) < 1:
            raise ValueError(f"{dataset.root}: {len(dataset.shards)} shards give some rank fewer than one batch of "
                             f"{batch_size} per worker ({max(1, num_workers)} workers x {dataset.world_size} "
                             "processes); lower the batch size or the number of workers, or write smaller shards")

    def steps(self, epoch: int) -> int:
        """Batches every rank yields in ``epoch``."""
        sizes = [n for _, n in self.dataset.shards]
        return min(sum(sum(sizes[s] for s in worker) // self.batch_size for worker in rank)
                   for rank in self.dataset.assignment(epoch, self.num_workers))

    def __len__(self) -> int:
        """Batches per epoch on this rank (for the epoch last passed to :meth:`epoch`, initially 0)."""
        return self.steps(self.current)

    def epoch(self, epoch: int) -> Iterator[list[torch.Tensor]]:
        """Epoch ``epoch``'s batches: images (B, 3, H, W), labels (B,)."""
        self.current = epoch
        self.dataset.epoch = epoch
        self.generator.manual_seed((self.seed * 1_000_003 + epoch) * 1_009 + self.dataset.rank)
        return itertools.islice(self.loader, self.steps(epoch))


def detect_format(root: str | os.PathLike) -> str:
    """``rec`` if ``root`` holds ``train.rec``, ``webdataset`` if its export summary says so, else ``folders``."""
    root = Path(root)
    if (root / "train.rec").is_file():
        return "rec"
    summary = _read_summary(root)
    return "webdataset" if summary is not None and summary.get("format") == "webdataset" else "folders"


def build_training_data(data: DictConfig, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                        pin_memory: bool = False) -> tuple[Dataset, EpochLoader | StreamLoader]:
    """The training set ``data`` (``cfg.data``) describes and its loader for this rank.

    Returns:
        ``(dataset, loader)``: the dataset has ``num_classes`` and ``len()`` (all images); the loader
        has ``len()`` (batches per epoch on this rank) and ``epoch(e)``.
    """
    fmt = str(data.get("format", "auto"))
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, found {fmt!r}")
    if fmt == "auto":
        fmt = detect_format(data.root)
    args = dict(width=data.width, depth=data.depth, transform=build_transform(data.augment, data.random_erasing),
                image_size=data.image_size)
    if fmt == "webdataset":
        stream = TarShardStream(data.root, **args, shuffle_buffer=int(data.get("shuffle_buffer", 10_000)), seed=seed,
                                rank=rank, world_size=world_size)
        return stream, StreamLoader(stream, batch_size, seed=seed, num_workers=data.num_workers, pin_memory=pin_memory)
    if fmt == "rec":
        dataset = RecordDataset(data.root, **args)
    else:
        dataset = ClassFolderDataset(data.root, **args, on_unreadable=str(data.get("on_unreadable", "skip")))
    return dataset, EpochLoader(dataset, batch_size, seed=seed, rank=rank, world_size=world_size,
                                num_workers=data.num_workers, pin_memory=pin_memory)
