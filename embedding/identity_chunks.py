"""Per-image embeddings read identity by identity, a chunk of identities at a time, without holding them all.

:func:`chunks_from_npz` streams the ``.npz`` that ``encode.py`` writes (``names`` ``<identity>/<image>``,
``embeddings`` (N, D) float32, ``labels`` (N,) int). ``np.savez`` stores its members uncompressed, so
each member is a ``.npy`` file at a fixed offset inside the zip: rows are read from there with plain
seeks and reads (nothing is memory-mapped, so the process holds one chunk, never the file; 300,000
identities x 50 images x 512-d is 31 GB). Only the labels (8 bytes per image) are read whole.

What the file must satisfy: the three members stored uncompressed (``np.savez``, not
``np.savez_compressed``), C order; the rows of each label contiguous (encode.py writes identity after
identity); every name of a label starting with the same ``<identity>/``. :func:`chunks_from_arrays` is
the in-memory form for library use (any row order: rows are grouped by a stable sort of the labels).
"""
from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class IdentityChunk:
    """Consecutive identities and their images.

    identities: (I,) identity names. counts: (I,) images per identity. embeddings: (n, D) float32,
    n = counts.sum(), the rows of identity 0 first. images: (n,) the name of each image within its
    identity (what follows ``<identity>/``).
    """

    identities: list[str]
    counts: np.ndarray
    embeddings: np.ndarray
    images: list[str]


def split_name(name: str) -> tuple[str, str]:
    """``"<identity>/<image>"`` -> (identity, image); a name without ``/`` is an identity with one image of the same name."""
    identity, slash, image = name.partition("/")
    return (identity, image) if slash else (name, name)


def _identities_of(names: Sequence[str], counts: np.ndarray, where: str) -> tuple[list[str], list[str]]:
    """Identity name per group and image name per row; every name of a group must share the identity."""
    parts = [split_name(n) for n in names]
    identities = []
    start = 0
    for count in counts.tolist():
        found = {identity for identity, _ in parts[start : start + count]}
        if len(found) != 1:
            raise ValueError(f"{where}: one label holds images of several identities {sorted(found)[:3]}")
        identities.append(found.pop())
        start += count
    return identities, [image for _, image in parts]


def _group_starts(labels: np.ndarray, where: str) -> np.ndarray:
    """(G + 1,) row where each run of equal labels starts, plus N; raises when a label has several runs."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be a 1-d integer array, found {labels.dtype} of shape {labels.shape}")
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.zeros(0, np.int64)
    run_labels = labels[starts]
    if len(np.unique(run_labels)) != len(starts):
        _values, first = np.unique(run_labels, return_index=True)
        again = np.setdiff1d(np.arange(len(starts)), first)[0]
        raise ValueError(f"{where}: the rows of label {run_labels[again]} are not contiguous (a second run starts at "
                         f"row {starts[again]}); rows must be grouped by identity, as encode.py writes them")
    return np.r_[starts, len(labels)].astype(np.int64)


def chunks_from_arrays(
    embeddings: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str] | None = None,
    identities_per_chunk: int = 1000,
) -> Iterator[IdentityChunk]:
    """In-memory embeddings (N, D) with labels (N,) as identity chunks, identities in increasing label order.

    ``names`` (N,) ``<identity>/<image>``; without them identity ``k`` is named ``str(k)`` (its label)
    and its images ``"0", "1", ...`` in row order.
    """
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be a (N, D) matrix, found shape {embeddings.shape}")
    if labels.shape != (len(embeddings),):
        raise ValueError(f"labels must have one entry per embedding: {len(embeddings)} embeddings, labels of shape {labels.shape}")
    if names is not None and len(names) != len(embeddings):
        raise ValueError(f"names must have one entry per embedding: {len(embeddings)} embeddings, {len(names)} names")
    if identities_per_chunk < 1:
        raise ValueError(f"identities_per_chunk must be >= 1, found {identities_per_chunk}")
    order = np.argsort(labels, kind="stable")
    bounds = _group_starts(labels[order], "labels")
    for g in range(0, len(bounds) - 1, identities_per_chunk):
        lo, hi = bounds[g], bounds[min(g + identities_per_chunk, len(bounds) - 1)]
        rows = order[lo:hi]
        counts = np.diff(bounds[g : g + identities_per_chunk + 1])
        if names is None:
            identities = [str(label) for label in labels[rows[np.r_[0, np.cumsum(counts)[:-1]]]].tolist()]
            images = [str(k) for count in counts.tolist() for k in range(count)]
        else:
            identities, images = _identities_of([str(names[i]) for i in rows], counts, "names")
        yield IdentityChunk(identities, counts, np.asarray(embeddings[rows], dtype=np.float32), images)


@dataclass
class StoredArray:
    """A ``.npy`` member stored uncompressed in a zip: where its data starts, its dtype and shape."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` along the first axis, read from the file (nothing else is loaded)."""
        row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * row_bytes)
            if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise ValueError(f"{self.path}: ended inside rows {start}:{stop} of an array of shape {self.shape}")
        return out


def stored_array(path: str | os.PathLike, member: str) -> StoredArray:
    """Locate ``<member>.npy`` inside the ``.npz`` ``path``; it must be stored uncompressed, C order, without objects."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{member}.npy")
    except KeyError:
        raise ValueError(f"{path}: no array {member!r} (an embedding file of encode.py has names, embeddings, labels)") from None
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz file: {err}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: array {member!r} is compressed and cannot be read row by row; write the file with "
                         "np.savez (as encode.py does), not np.savez_compressed")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the zip local file header; its name and extra field lengths end it
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: damaged zip entry for {member!r}")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
        except ValueError as err:
            raise ValueError(f"{path}: array {member!r} has no valid .npy header: {err}") from None
        offset = f.tell()
    if fortran_order or dtype.hasobject:
        raise ValueError(f"{path}: array {member!r} must be a C-order array without Python objects")
    return StoredArray(path, offset, dtype, tuple(shape))


def chunks_from_npz(path: str | os.PathLike, identities_per_chunk: int = 1000) -> tuple[dict, Iterator[IdentityChunk]]:
    """Stream an embedding ``.npz`` (names, embeddings, labels) as identity chunks, in file order.

    Returns:
        ``{"n_images", "n_identities", "dim"}`` and the chunk iterator. The file is checked before the
        iterator is returned: members, shapes, label grouping (one-line errors naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} does not exist; write it with encode.py")
    if identities_per_chunk < 1:
        raise ValueError(f"identities_per_chunk must be >= 1, found {identities_per_chunk}")
    names, embeddings, labels_member = (stored_array(path, m) for m in ("names", "embeddings", "labels"))
    if len(embeddings.shape) != 2 or embeddings.dtype != np.float32:
        raise ValueError(f"{path}: embeddings must be a (N, D) float32 matrix, found {embeddings.dtype} {embeddings.shape}")
    n = embeddings.shape[0]
    if names.shape != (n,) or labels_member.shape != (n,):
        raise ValueError(f"{path}: {n} embeddings but names of shape {names.shape} and labels of shape {labels_member.shape}")
    if names.dtype.kind != "U":
        raise ValueError(f"{path}: names must be a unicode string array, found dtype {names.dtype}")
    labels = labels_member.read_rows(0, n)
    bounds = _group_starts(labels, str(path))
    info = {"n_images": int(n), "n_identities": int(len(bounds) - 1), "dim": int(embeddings.shape[1])}

    def chunks() -> Iterator[IdentityChunk]:
        for g in range(0, len(bounds) - 1, identities_per_chunk):
            lo, hi = int(bounds[g]), int(bounds[min(g + identities_per_chunk, len(bounds) - 1)])
            counts = np.diff(bounds[g : g + identities_per_chunk + 1])
            x = embeddings.read_rows(lo, hi)
            if not np.isfinite(x).all():
                raise ValueError(f"{path}: embeddings of rows {lo}:{hi} contain NaN or inf")
            identities, images = _identities_of(names.read_rows(lo, hi).tolist(), counts, str(path))
            yield IdentityChunk(identities, counts, x, images)

    return info, chunks()
