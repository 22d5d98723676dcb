"""FR training data from class folders (:class:`ClassFolderDataset`), augmentation and the epoch loader.

Shard formats (insightface RecordIO, WebDataset tar) and the choice between them are in
:mod:`face_recognition_training.shard_data`; every format gives the transform an RGB ``PIL.Image``
at ``image_size`` (:func:`to_training_image`), so augmentation and labels are the same whatever the storage.

``width`` keeps the first identities and ``depth`` the first images of each identity, both in
sorted name order, so "10,000 x 50" selects the same images on every machine (the paper's
setting). Labels are the positions of the kept identity folders in sorted order.

Augmentation ``ra_4_16`` uses torchvision's ``RandAugment(num_ops=4, magnitude=16)``, which
differs from the original IDiff-Face/ElasticFace copy of RandAugment in these ways:

- Operation list. Original (13): Identity, ShearX, TranslateX, Rotate, Brightness, Color,
  Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize, Grayscale.
  torchvision (14): the same without Grayscale, plus ShearY and TranslateY.
- Magnitude. The original draws a bin uniformly from 1..16 (of 31) for every operation
  (with ``np.random``, so data-loader workers forked with the same numpy state repeat draws);
  torchvision always uses bin 16, i.e. the strongest setting of the original's range.
- Ranges and interpolation are the same: shear up to 0.3, translation up to 150/331 of the
  width, rotation up to 30 degrees, enhancement factors 1 +- 0.9, nearest interpolation,
  random sign for the signed operations.
"""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
)
from torchvision import transforms

from utils.image_io import UnreadablePolicy

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
AUGMENTATIONS = ("none", "ra_4_16")


def to_training_image(img: Image.Image, image_size: int) -> Image.Image:
    """RGB, square at ``image_size`` (bilinear resize when the size differs)."""
    img = img.convert("RGB")
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    return img


def decode_image(data: bytes, image_size: int, where: str) -> Image.Image:
    """Encoded JPEG/PNG bytes -> RGB ``PIL.Image`` at ``image_size``; undecodable bytes raise one line."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return to_training_image(img, image_size)
    except OSError as err:
        raise ValueError(f"{where}: the image bytes do not decode ({err})") from None




class UnreadableImageError(ValueError):
    """A training image cannot be decoded (truncated, not an image)."""


class ClassFolderDataset(Dataset):
    """Images in ``root/<identity>/...`` with labels 0..C-1 from the sorted identity folder names.

    Hidden entries (``.name``, e.g. the ``.<identity>.<random>.tmp/`` a killed writer leaves) are
    neither identities nor images.

    Args:
        root: folder of identity folders (images may sit in sub-folders; all sorted).
        width: number of identities kept (first in sorted order); 0 or None keeps all.
        depth: number of images kept per identity (first in sorted order); 0 or None keeps all.
        transform: applied to the RGB ``PIL.Image``; returns the (3, H, W) tensor.
        image_size: images of another size are resized (bilinear) to ``image_size`` square first.
        on_unreadable: ``skip`` logs the file (with a count) and uses the next readable sample, with
            that sample's label; ``stop`` raises one line naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        width: int | None = None,
        depth: int | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        image_size: int = 112,
        on_unreadable: str = "skip",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"training data root {self.root} is not a folder (expected <root>/<identity>/<images>)")
        for name, value in (("width", width), ("depth", depth)):
            if value is not None and value < 0:
                raise ValueError(f"ClassFolderDataset: {name} must be >= 0 (0 = no limit), found {value}")
        self.policy = UnreadablePolicy(on_unreadable, "data.on_unreadable")
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"training data root {self.root} contains no identity folders")
        if width:
            if width > len(classes):
                log.warning("width=%d but %s has only %d identity folders; using all", width, self.root, len(classes))
            classes = classes[:width]
        self.classes = classes
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            folder = self.root / name
            files = sorted(
                p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            )
            if not files:
                raise FileNotFoundError(
                    f"identity folder {self.root / name} has no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
                )
            self.samples.extend((path, label) for path in files[: depth or None])
        self.transform = transform
        self.image_size = image_size

    @property
    def num_classes(self) -> int:
        """C, the number of identities kept."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index``, square at ``image_size``; raises one line naming an unreadable file."""
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                return to_training_image(img, self.image_size)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise UnreadableImageError(f"unreadable training image {path}: {type(err).__name__}: {err}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image, int]:
        """``(image, label)``: image (3, H, W) in [-1, 1] after the transform, label in [0, C).

        An unreadable image is replaced by the next readable sample (``skip``), whose label is returned.
        """
        img, used = self.policy.load(index, len(self), self.load_image, UnreadableImageError, str(self.root))
        return (self.transform(img) if self.transform is not None else img), self.samples[used][1]


def build_transform(augment: str = "none", random_erasing: float = 0.0) -> transforms.Compose:
    """PIL image -> (3, H, W) float tensor in [-1, 1] with training augmentation.

    Args:
        augment: ``"none"`` (horizontal flip only) or ``"ra_4_16"`` (flip + RandAugment(4, 16)).
        random_erasing: probability of ``RandomErasing`` on the normalised tensor (0 disables).
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, found {augment!r}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing must be a probability in [0, 1], found {random_erasing}")
    steps: list[Callable] = [transforms.RandomHorizontalFlip()]
    if augment == "ra_4_16":
        steps.append(transforms.RandAugment(num_ops=4, magnitude=16))
    steps += [transforms.ToTensor(), transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3)]
    if random_erasing > 0:
        steps.append(transforms.RandomErasing(p=random_erasing))
    return transforms.Compose(steps)


class EpochLoader:
    """A ``DataLoader`` whose order and augmentation are a function of (seed, epoch, rank) only.

    The ``DistributedSampler`` (also used with one process) shuffles with ``seed + epoch``;
    the loader's generator, which seeds the workers' torch/random/numpy states, is re-seeded
    from (seed, epoch, rank) before each epoch. Resuming at an epoch boundary therefore
    replays exactly the batches and augmentations an uninterrupted run would see.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {batch_size}")
        if len(dataset) < batch_size * world_size:
            raise ValueError(
                f"the training set has {len(dataset)} images, fewer than one global batch "
                f"({batch_size} x {world_size} processes); lower the batch size"
            )
        self.seed, self.rank = seed, rank
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            drop_last=True,
            generator=self.generator,
            persistent_workers=False,
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.loader)

    def epoch(self, epoch: int) -> DataLoader:
        """The loader, set up to yield epoch ``epoch``'s batches: images (B, 3, H, W), labels (B,)."""
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed((self.seed * 1_000_003 + epoch) * 1_009 + self.rank)
        return self.loader
