"""WebDataset tar shards: ``<identity>/<k>.png`` (or ``.jpg``) + ``<identity>/<k>.cls`` per sample.

A WebDataset shard is a plain tar file whose consecutive members sharing a *key* (the path up to
the first dot of the file name) form one sample; the part after the dot names the field. Here a
sample is one image of one identity: key ``<identity>/<k>`` (k = the image's index within its
identity), fields ``png``/``jpg`` (the encoded image) and ``cls`` (the class label as ASCII
decimal, what ``webdataset``'s decoder turns into an ``int``).

:class:`TarShardWriter` writes reproducible tars (POSIX pax format, every member with mtime 0,
uid/gid 0, no user names, mode 0444), so the same samples always give the same bytes.
:func:`iter_tar_members` is a minimal tar reader (ustar, pax ``path`` records and GNU long
names; regular files only) used by the FR training stream; :func:`iter_samples` groups its
members into samples.
"""
from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

BLOCK = 512
IMAGE_FIELDS = ("png", "jpg", "jpeg")


def sample_key(identity: str, k: int) -> str:
    """The WebDataset key of image ``k`` of ``identity``: ``<identity>/<k>``."""
    return f"{identity}/{k}"


def split_key(name: str) -> tuple[str, str]:
    """``"id7/3.png" -> ("id7/3", "png")``: the key ends at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, field = base.partition(".")
    if not dot:
        raise ValueError(f"tar member {name!r} has no '.<field>' after its key")
    return (f"{folder}/{stem}" if folder else stem), field


class TarShardWriter:
    """Write samples into one tar file with fixed member metadata (byte-reproducible).

    Args:
        path: the tar file to create (truncated).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.file = open(path, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, key: str, fields: dict[str, bytes]) -> None:
        """Append one sample: a member ``<key>.<field>`` per field, in the given order."""
        for field, data in fields.items():
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        """Write the end-of-archive blocks, flush to disk and close."""
        if self.file.closed:
            return
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def __enter__(self) -> TarShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _octal(field: bytes, where: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if field[:1] and field[0] & 0x80:
        raise ValueError(f"{where}: base-256 tar numbers (members over 8 GiB) are not supported")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise ValueError(f"{where}: bad octal number {field!r} in a tar header (not a tar file?)") from None


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (``"<len> path=<value>\\n"`` records)."""
    path, pos = None, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8")
        pos += length
    return path


def iter_tar_members(stream: BinaryIO, where: str = "tar") -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of every regular file in a tar stream, in order.

    Reads 512-byte headers (checksums verified), applies pax ``path`` and GNU ``L`` long names, and
    skips directories, links and pax global headers. A file that ends before the end-of-archive
    block raises (a truncated shard is never read as a shorter one).
    """
    long_name: str | None = None
    while True:
        header = stream.read(BLOCK)
        if header == b"\0" * BLOCK:
            return
        if len(header) < BLOCK:
            raise ValueError(f"{where}: the file ends before the tar end-of-archive block (truncated shard?)")
        checksum = _octal(header[148:156], where)
        if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise ValueError(f"{where}: a tar header's checksum does not match (damaged shard, or not a tar file)")
        size, kind = _octal(header[124:136], where), header[156:157]
        data = stream.read(size + (-size % BLOCK))
        if len(data) < size + (-size % BLOCK):
            raise ValueError(f"{where}: the file ends inside a member of {size} bytes (truncated shard?)")
        data = data[:size]
        if kind == b"x":
            long_name = _pax_path(data) or long_name
            continue
        if kind == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8")
            continue
        name = header[:100].rstrip(b"\0").decode("utf-8")
        if header[257:263] == b"ustar\0" and header[345:500].rstrip(b"\0"):
            name = header[345:500].rstrip(b"\0").decode("utf-8") + "/" + name
        if long_name is not None:
            name, long_name = long_name, None
        if kind in (b"0", b"\0", b"7"):
            yield name, data


def iter_samples(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {field: bytes})`` of every sample of a WebDataset tar, in order."""
    key: str | None = None
    fields: dict[str, bytes] = {}
    with open(path, "rb") as f:
        for name, data in iter_tar_members(f, str(path)):
            member_key, field = split_key(name)
            if member_key != key and fields:
                yield key, fields  # type: ignore[misc]
                fields = {}
            key = member_key
            fields[field] = data
    if fields:
        yield key, fields  # type: ignore[misc]


def image_and_label(key: str, fields: dict[str, bytes], where: str = "sample") -> tuple[bytes, int]:
    """The encoded image and the class label of one sample; a missing field raises one line."""
    image = next((fields[f] for f in IMAGE_FIELDS if f in fields), None)
    if image is None or "cls" not in fields:
        raise ValueError(f"{where}: sample {key!r} needs an image (.png/.jpg) and a .cls label, found {sorted(fields)}")
    return image, int(fields["cls"])


def list_shards(folder: str | os.PathLike) -> list[Path]:
    """The ``*.tar`` files of ``folder`` in name order (hidden temporaries left out)."""
    return sorted(p for p in Path(folder).glob("*.tar") if not p.name.startswith("."))
