"""Identity blocks: all images of one identity tiled into one PNG, with no blank tiles.

The original saved 50 samples per identity with ``make_grid(nrow=4)``, i.e. a 13 x 4 grid whose two
last tiles were black, and every reader had to guess the tile size. Here a block of ``n`` tiles
uses a ``rows x cols`` grid with ``rows * cols == n`` exactly (:func:`grid_shape`), and the grid is
part of the file name: ``<identity>.grid<rows>x<cols>.png``, so reading is exact for any tile size.

Files are written under a temporary name in the same folder and renamed (``os.replace``), so a file
with a final name is always complete. Identity names pass :func:`utils.names.safe_child` first: a
name that is not a single visible file name, or that resolves outside the folder, is refused.
Blocks from the original code (no grid in the name) can be read with an explicit ``tile_size``;
their all-black padding tiles are dropped.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.atomic import atomic_folder, write_atomic
from utils.names import check_name, safe_child

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
BLOCK_PATTERN = re.compile(r"^(?P<identity>.+)\.grid(?P<rows>\d+)x(?P<cols>\d+)\.png$")


def grid_shape(n: int) -> tuple[int, int]:
    """The most square ``(rows, cols)`` with ``rows * cols == n`` and ``rows <= cols`` (50 -> (5, 10))."""
    if n < 1:
        raise ValueError(f"a block needs at least one image, found n={n}")
    rows = max(r for r in range(1, int(n**0.5) + 1) if n % r == 0)
    return rows, n // rows


def block_name(identity: str, n: int) -> str:
    """File name of the block of ``n`` images of ``identity``: ``<identity>.grid<rows>x<cols>.png``."""
    rows, cols = grid_shape(n)
    return f"{identity}.grid{rows}x{cols}.png"


def natural_key(name: str) -> tuple:
    """Sort key that orders ``"2" < "10"`` and ``"id2" < "id10"``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def save_png_atomic(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 RGB array as PNG via a temporary file + ``os.replace``."""
    return write_atomic(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def tile(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows * H, cols * W, 3) image, row-major, grid from :func:`grid_shape`."""
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be an (N, H, W, 3) array, found shape {images.shape}")
    rows, cols = grid_shape(len(images))
    n, h, w, _ = images.shape
    return images.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)


def untile(block: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Inverse of :func:`tile`: (rows * H, cols * W, 3) -> (rows * cols, H, W, 3)."""
    height, width = block.shape[:2]
    if height % rows or width % cols:
        raise ValueError(f"a {width}x{height} block cannot hold a {rows}x{cols} grid of equal tiles")
    h, w = height // rows, width // cols
    return block.reshape(rows, h, cols, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, h, w, 3)


def write_block(folder: str | os.PathLike, identity: str, images: np.ndarray) -> Path:
    """Write ``images`` (N, H, W, 3) uint8 of ``identity`` to ``folder/<identity>.grid<r>x<c>.png`` atomically."""
    what = f"identity name for {folder}"
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"block images of {identity!r} must be uint8, found {images.dtype}")
    path = safe_child(folder, block_name(check_name(identity, what), len(images)), what)
    return save_png_atomic(tile(images), path)


def write_image_folder(folder: str | os.PathLike, identity: str, images: Sequence[np.ndarray]) -> Path:
    """Write ``folder/<identity>/<k>.png`` for k = 0..N-1; the folder is filled under a temporary name and renamed."""
    final = safe_child(folder, identity, f"identity name for {folder}")
    with atomic_folder(final, replace=True) as tmp:
        for k, image in enumerate(images):
            Image.fromarray(np.asarray(image)).save(tmp / f"{k}.png", format="PNG")
    return final


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image file as (H, W, 3) uint8 RGB; a damaged file raises one line naming it."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"{path} is not a readable image (truncated or not an image file?): {err}") from None


def read_block(path: str | os.PathLike, tile_size: int | None = None) -> np.ndarray:
    """Read a block as (N, H, W, 3) uint8 tiles.

    Args:
        path: ``<identity>.grid<r>x<c>.png`` (exact), or an original block without a grid tag.
        tile_size: side of the square tiles of an original block (128 samples, 112 aligned);
            required when the name has no grid tag. All-black tiles (the original's padding) are dropped.
    """
    path = Path(path)
    block = read_image(path)
    match = BLOCK_PATTERN.match(path.name)
    if match:
        return untile(block, int(match["rows"]), int(match["cols"]))
    if tile_size is None:
        raise ValueError(f"{path}: the name has no '.grid<rows>x<cols>' tag; pass tile_size for an original block")
    height, width = block.shape[:2]
    if height % tile_size or width % tile_size:
        raise ValueError(f"{path}: a {width}x{height} block is not a grid of {tile_size}x{tile_size} tiles")
    tiles = untile(block, height // tile_size, width // tile_size)
    return tiles[tiles.reshape(len(tiles), -1).max(axis=1) > 0]


def identity_of(path: Path) -> str:
    """The identity a block or image file belongs to: the part before ``.grid<r>x<c>.png``, else the stem."""
    match = BLOCK_PATTERN.match(path.name)
    return match["identity"] if match else path.stem


def discover_identities(folder: str | os.PathLike) -> dict[str, Path]:
    """Map identity -> source in ``folder``: block files, per-identity image folders, or single image files.

    A sub-folder ``<identity>/`` holding images is one identity; an image file is one identity
    (a block of several tiles, or a single face). Hidden (temporary) entries are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in entry.iterdir()):
            identity = entry.name
        elif entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            identity = identity_of(entry)
        else:
            continue
        if identity in found:
            raise ValueError(f"{folder}: identity {identity!r} appears twice ({found[identity].name}, {entry.name})")
        found[identity] = entry
    return found


def folder_images(folder: Path) -> list[Path]:
    """The image files of a per-identity folder, in natural order (``2.png`` before ``10.png``)."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_identity(source: Path, tile_size: int | None = None) -> np.ndarray:
    """All images (N, H, W, 3) uint8 of one identity from a block, a folder or a single file.

    A file without a grid tag is read as a block when ``tile_size`` is given, else as one image.
    Images of a folder must share one size.
    """
    if source.is_dir():
        images = [read_image(p) for p in folder_images(source)]
        shapes = sorted({im.shape for im in images})
        if len(shapes) > 1:
            raise ValueError(f"{source}: images of one identity must share a size, found {shapes}")
        return np.stack(images)
    if BLOCK_PATTERN.match(source.name) or tile_size is not None:
        return read_block(source, tile_size)
    return read_image(source)[None]


class UnreadablePolicy:
    """What a training dataset does with an image that cannot be decoded: ``stop`` or ``skip``.

    ``skip`` substitutes the next readable item (wrapping around) and logs each bad file once per process.
    ``key`` is the config key (e.g. ``data.on_unreadable``), named in messages.
    """

    POLICIES = ("skip", "stop")

    def __init__(self, policy: str, key: str) -> None:
        if policy not in self.POLICIES:
            raise ValueError(f"{key} must be one of {self.POLICIES}, found {policy!r}")
        self.policy, self.key = policy, key
        self.unreadable: set[str] = set()

    def load(self, index: int, count: int, read: Callable[[int], T], error: type[Exception],
             where: str) -> tuple[T, int]:
        """``(read(used), used)``: item ``index``, or under ``skip`` the next one ``read`` does not fail on with ``error``."""
        for offset in range(count):
            candidate = (index + offset) % count
            try:
                return read(candidate), candidate
            except error as err:
                if self.policy == "stop":
                    raise error(f"{err} ({self.key}=stop; set {self.key}=skip to use the next readable image)") from None
                if str(err) not in self.unreadable:
                    self.unreadable.add(str(err))
                    log.warning("%s; using the next readable image instead (%d unreadable so far in this process)",
                                err, len(self.unreadable))
        raise error(f"no image in {where} is readable")
