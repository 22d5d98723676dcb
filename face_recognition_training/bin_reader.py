"""Read and write insightface verification ``.bin`` files without MXNet and without trusting pickle.

A ``.bin`` (``lfw.bin``, ``agedb_30.bin``, ...) is a pickle of ``(bins, issame_list)``:
``bins`` holds 2N encoded images (JPEG/PNG bytes), image ``2i`` and ``2i+1`` form pair ``i``;
``issame_list`` holds N booleans. The published files were written by Python 2, so they are
read with ``encoding="bytes"``.

Unpickling is restricted: the pickle opcodes for bytes, lists, tuples, bools, ints (and the
harmless str/float/None/dict literals) need no global, and the only globals admitted are
the few that numpy uses to rebuild arrays, dtypes and scalars, plus ``_codecs.encode`` (how
Python 3's protocol 2 spells ``bytes``), replaced by a function that only turns a latin-1
``str`` into ``bytes``. Any other global (``os.system``, ``builtins.eval``, a class with
``__reduce__``) is refused before anything is called, and the decoded structure is then
type-checked.
"""
from __future__ import annotations

import importlib
import io
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class BinFileError(ValueError):
    """A ``.bin`` verification file is missing, unsafe or not in the insightface layout."""


def _latin1_bytes(text: str | bytes, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` that can only produce ``bytes`` from a latin-1 ``str``."""
    if isinstance(text, bytes):
        return text
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode is only admitted for latin-1 text, found encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The numpy callables an array/dtype/scalar pickle references, under numpy 1 and 2 module names."""
    try:  # numpy >= 2 renamed numpy.core to numpy._core (pickles may name either)
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
    admitted: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        admitted[(module, "_reconstruct")] = multiarray._reconstruct
        admitted[(module, "scalar")] = multiarray.scalar
    return admitted


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only the numpy rebuild helpers."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._admitted: dict[tuple[str, str], Callable[..., Any] | type] = {
            **_numpy_globals(),
            ("_codecs", "encode"): _latin1_bytes,
        }

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401  (pickle API)
        """Return an admitted global or refuse the file."""
        if (module, name) in self._admitted:
            return self._admitted[(module, name)]
        raise BinFileError(
            f"{self._source}: refused to unpickle global '{module}.{name}'; a verification .bin may only hold "
            "bytes, lists, tuples, bools, ints and numpy arrays"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids never occur in ``.bin`` files."""
        raise BinFileError(f"{self._source}: refused persistent id {pid!r} in a verification .bin")


def _as_bytes(item: Any, index: int, source: str) -> bytes:
    """One encoded image as ``bytes`` (insightface stores bytes; some re-exports store uint8 arrays)."""
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise BinFileError(f"{source}: image {index} must be encoded bytes, found {type(item).__name__}")


def load_bin_raw(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Safely unpickle a ``.bin`` and check its layout.

    Returns:
        ``(encoded, is_same)``: 2N encoded images (bytes) and an (N,) bool array.
    """
    path = Path(path)
    if not path.is_file():
        raise BinFileError(f"verification file {path} does not exist")
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, str(path)).load()
    except BinFileError:
        raise
    except Exception as err:  # truncated / not a pickle: EOFError, UnpicklingError, ValueError, ...
        raise BinFileError(f"{path} is not a readable insightface .bin pickle: {type(err).__name__}: {err}") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFileError(f"{path}: expected a pickled pair (images, issame_list), found {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise BinFileError(f"{path}: expected a list of encoded images, found {type(bins).__name__}")
    encoded = [_as_bytes(item, i, str(path)) for i, item in enumerate(bins)]
    if isinstance(issame, np.ndarray):
        if issame.dtype != np.bool_ or issame.ndim != 1:
            raise BinFileError(f"{path}: issame array must be 1-D bool, found {issame.dtype} with shape {issame.shape}")
        is_same = issame.copy()
    elif isinstance(issame, (list, tuple)) and all(isinstance(v, (bool, np.bool_)) for v in issame):
        is_same = np.asarray(issame, dtype=bool)
    else:
        raise BinFileError(f"{path}: issame_list must be a list of booleans, found {type(issame).__name__}")
    if len(encoded) != 2 * len(is_same):
        raise BinFileError(f"{path}: expected 2 x {len(is_same)} images for {len(is_same)} pairs, found {len(encoded)}")
    return encoded, is_same


def decode_image(data: bytes, image_size: int = 112, source: str = "") -> np.ndarray:
    """Decode one encoded image with Pillow to an (H, W, 3) uint8 RGB array, resized to ``image_size``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except OSError as err:
        raise BinFileError(f"{source}: an image could not be decoded ({err})") from None


def read_bin(path: str | os.PathLike, image_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Read a verification ``.bin``.

    Returns:
        ``images``: (2N, image_size, image_size, 3) uint8 RGB, pairs at rows (2i, 2i+1);
        ``is_same``: (N,) bool.
    """
    encoded, is_same = load_bin_raw(path)
    images = np.stack([decode_image(data, image_size, source=str(path)) for data in encoded]) if encoded else (
        np.zeros((0, image_size, image_size, 3), np.uint8)
    )
    return images, is_same


def write_bin(
    path: str | os.PathLike,
    images: np.ndarray | Sequence[np.ndarray],
    is_same: np.ndarray | Sequence[bool],
    image_format: str = "PNG",
) -> Path:
    """Write a ``.bin`` in the insightface layout (PNG keeps the pixels exact, JPEG like the originals).

    Args:
        path: output file.
        images: (2N, H, W, 3) uint8 RGB, pair ``i`` at rows ``2i`` and ``2i + 1``.
        is_same: (N,) bool.
        image_format: Pillow format name, ``"PNG"`` or ``"JPEG"``.
    """
    flags = [bool(v) for v in np.asarray(is_same).reshape(-1)]
    if len(images) != 2 * len(flags):
        raise ValueError(f"write_bin: expected 2 x {len(flags)} images for {len(flags)} pairs, found {len(images)}")
    encoded = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"write_bin: image {i} must be (H, W, 3) uint8, found {image.dtype} {image.shape}")
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=image_format)
        encoded.append(buffer.getvalue())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump((encoded, flags), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path
