"""insightface RecordIO (``train.rec`` + ``train.idx`` + ``property``), written and read without MXNet.

This is the layout insightface's ``arcface_torch`` (``MXFaceDataset``), MXNet
(``mx.recordio.MXIndexedRecordIO``) and NVIDIA DALI (``fn.readers.mxnet``) read. All integers are
little-endian.

``.rec``: records one after another, each starting at a multiple of 4 bytes. A record is one or
more *parts*::

    magic   uint32  0xced7230a
    lrec    uint32  cflag << 29 | length        (length < 2**29)
    data    length bytes
    pad     zero bytes up to the next multiple of 4

``cflag`` 0 marks a whole record. dmlc-core's writer cuts a payload wherever the magic number
appears in it at an offset that is a multiple of 4: the magic is left out and the pieces become
parts with ``cflag`` 1 (first), 2 (middle) and 3 (last); a reader joins them with the magic
between. :func:`frame` and :func:`unframe` do exactly that, so our files equal MXNet's byte for byte.

Payload of a record (``mx.recordio.pack``)::

    flag    uint32   0: one label in ``label``; n > 0: n float32 labels follow the header
    label   float32
    id      uint64   the record's key here
    id2     uint64   0
    labels  flag x float32  (only when flag > 0)
    image   the encoded image (JPEG or PNG), possibly empty

insightface's dataset layout (:class:`RecordWriter` with ``header=True``):

* key 0: a header record, flag 2, labels ``(n_images + 1, n_images + 1 + n_identities)``, no image.
  ``arcface_torch`` reads ``label[0]`` and takes keys ``1 .. label[0] - 1`` as the images.
* keys 1 .. n_images: image records, flag 0, ``label`` = class (0 .. C-1), the encoded image.
* keys n_images + 1 .. n_images + n_identities: one record per identity, flag 2, labels
  ``(first key, last key + 1)`` of its images (MXNet-era insightface iterators read them).

Without the header (``header=False``) the file holds image records only, keys 0 .. n_images - 1:
what DALI needs (it decodes every record in the index) and what ``arcface_torch`` also reads (a
record 0 with flag 0 makes it use every key).

``.idx``: a text line ``"<key>\\t<byte offset of the record's first part>\\n"`` per record.
``property``: ``"<num_classes>,<height>,<width>\\n"``.

Class labels and the header's key counts are float32, which holds integers exactly up to 2**24
(16,777,216): :func:`pack` refuses larger ones.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_BITS = 29
MAX_PART = 1 << LENGTH_BITS
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
FLOAT32_EXACT = 1 << 24


@dataclass(frozen=True)
class IRHeader:
    """The image-record header: ``labels`` has one value when ``flag`` is 0, else ``flag`` values."""

    flag: int
    labels: tuple[float, ...]
    id: int = 0
    id2: int = 0

    @property
    def label(self) -> float:
        """The first label (the class of an image record)."""
        return self.labels[0]


def pack(labels: float | tuple[float, ...] | list[float], payload: bytes = b"", key: int = 0) -> bytes:
    """Header + ``payload``: one label -> flag 0 (an image record), several -> flag = their number.

    Labels must be integers below 2**24 (float32 is exact there), as class labels and keys are.
    """
    scalar = isinstance(labels, (int, float, np.integer, np.floating))
    values = [float(labels)] if scalar else [float(v) for v in labels]
    if not values:
        raise ValueError("a RecordIO header needs at least one label, found none")
    for v in values:
        if not (v == int(v) and 0 <= v < FLOAT32_EXACT):
            raise ValueError(f"RecordIO labels are float32 and must be integers in [0, 2**24), found {v}")
    if len(values) == 1:
        return struct.pack(IR_FORMAT, 0, values[0], key, 0) + payload
    return struct.pack(IR_FORMAT, len(values), 0.0, key, 0) + np.asarray(values, "<f4").tobytes() + payload


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """``(header, image bytes)`` of a record's payload (the inverse of :func:`pack`)."""
    if len(record) < IR_SIZE:
        raise ValueError(f"a RecordIO payload starts with a {IR_SIZE}-byte header, found {len(record)} bytes")
    flag, label, key, key2 = struct.unpack(IR_FORMAT, record[:IR_SIZE])
    if flag == 0:
        return IRHeader(0, (label,), key, key2), record[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(record) < end:
        raise ValueError(f"a RecordIO header announces {flag} labels but the record has {len(record)} bytes")
    labels = tuple(float(v) for v in np.frombuffer(record[IR_SIZE:end], "<f4"))
    return IRHeader(flag, labels, key, key2), record[end:]


def _part(cflag: int, data: bytes) -> bytes:
    return MAGIC_BYTES + struct.pack("<I", (cflag << LENGTH_BITS) | len(data)) + data + b"\0" * (-len(data) % 4)


def frame(payload: bytes) -> bytes:
    """The bytes dmlc-core writes for one record: parts cut at 4-aligned magic numbers, each padded."""
    if len(payload) >= MAX_PART:
        raise ValueError(f"RecordIO records must be shorter than 2**29 bytes, found {len(payload)}")
    cuts, i = [], payload.find(MAGIC_BYTES)
    while i >= 0:  # bytes.find, not a Python loop over every 4 bytes (1.3 ms per 8 KB image)
        if i % 4 == 0:
            cuts.append(i)
        i = payload.find(MAGIC_BYTES, i + (4 if i % 4 == 0 else 1))
    if not cuts:
        return _part(0, payload)
    parts, start = [], 0
    for n, i in enumerate(cuts):
        parts.append(_part(1 if n == 0 else 2, payload[start:i]))
        start = i + 4
    parts.append(_part(3, payload[start:]))
    return b"".join(parts)


def unframe(stream: BinaryIO, where: str = "record") -> bytes | None:
    """Read one record (all its parts) from ``stream``; None at the end of the file."""
    pieces: list[bytes] = []
    while True:
        head = stream.read(8)
        if not head and not pieces:
            return None
        if len(head) < 8:
            raise ValueError(f"{where}: the file ends inside a record frame (truncated .rec?)")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise ValueError(f"{where}: expected the RecordIO magic 0x{MAGIC:08x}, found 0x{magic:08x} "
                             "(wrong offset in the .idx, or not a .rec file)")
        cflag, length = lrec >> LENGTH_BITS, lrec & (MAX_PART - 1)
        data = stream.read(length + (-length % 4))
        if len(data) < length:
            raise ValueError(f"{where}: the file ends inside a record of {length} bytes (truncated .rec?)")
        pieces.append(data[:length])
        if cflag in (0, 3):
            return MAGIC_BYTES.join(pieces)
        if cflag not in (1, 2):
            raise ValueError(f"{where}: unknown RecordIO continuation flag {cflag}")


class RecordWriter:
    """Append records to a ``.rec`` and their offsets to a ``.idx``, like ``MXIndexedRecordIO(..., 'w')``.

    Args:
        rec_path, idx_path: files to create (truncated).
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self.rec = open(rec_path, "wb")
        self.idx = open(idx_path, "w", newline="\n")

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; returns its byte offset."""
        offset = self.rec.tell()
        self.rec.write(frame(payload))
        self.idx.write(f"{key}\t{offset}\n")
        return offset

    def write_at(self, offset: int, payload: bytes) -> None:
        """Overwrite a record written earlier at ``offset`` with one of the same framed size."""
        end = self.rec.tell()
        self.rec.seek(offset)
        self.rec.write(frame(payload))
        self.rec.seek(end)

    def close(self) -> None:
        """Flush both files to disk and close them."""
        for f in (self.rec, self.idx):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_index(idx_path: str | os.PathLike) -> dict[int, int]:
    """``{key: offset}`` from a ``.idx`` file, in file order."""
    index: dict[int, int] = {}
    with open(idx_path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.strip().split("\t")
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise ValueError(f"{idx_path}:{n}: expected '<key>\\t<offset>', found {line.strip()!r}") from None
            index[key] = offset
    return index


class RecordReader:
    """Random access to an indexed ``.rec`` (our files, MXNet's, insightface's).

    The file is opened lazily in each process, so a reader built before ``DataLoader`` workers
    fork is safe to use in them.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        for path, what in ((self.rec_path, "record file"), (self.idx_path, "index file")):
            if not path.is_file():
                raise FileNotFoundError(f"RecordIO {what} {path} does not exist")
        self.index = read_index(self.idx_path)
        self._file: BinaryIO | None = None
        self._pid = -1

    @property
    def keys(self) -> list[int]:
        """The keys in ``.idx`` order."""
        return list(self.index)

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (header + image)."""
        if self._pid != os.getpid():
            self._file, self._pid = open(self.rec_path, "rb"), os.getpid()  # kept open between reads
        if key not in self.index:
            raise KeyError(f"{self.idx_path} has no key {key}")
        self._file.seek(self.index[key])
        record = unframe(self._file, f"{self.rec_path} (key {key})")
        if record is None:
            raise ValueError(f"{self.rec_path}: key {key} points past the end of the file")
        return record

    def image_keys(self) -> list[int]:
        """The image records' keys, by ``arcface_torch``'s rule: ``1 .. label[0] - 1`` when record 0 is a
        header (flag > 0), else every key."""
        first = min(self.index)
        header, _ = unpack(self.read(first))
        if first == 0 and header.flag > 0:
            return list(range(1, int(header.labels[0])))
        return self.keys

    def close(self) -> None:
        """Close the file (it reopens on the next read)."""
        if self._file is not None:
            self._file.close()
            self._file, self._pid = None, -1


def write_property(path: str | os.PathLike, num_classes: int, height: int, width: int) -> None:
    """Write ``property`` (``"<num_classes>,<height>,<width>"``)."""
    Path(path).write_text(f"{num_classes},{height},{width}\n")


def read_property(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(num_classes, height, width)`` from a ``property`` file."""
    text = Path(path).read_text().strip()
    try:
        num_classes, height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{path}: expected '<num_classes>,<height>,<width>', found {text!r}") from None
    return num_classes, height, width
