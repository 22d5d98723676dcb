"""insightface RecordIO without MXNet: the byte layout, magic-number splitting, headers, index and property files.

The expected bytes are built by hand from the format's definition (dmlc-core's framing and
``mx.recordio.pack``); during development the same files were checked against MXNet 1.9.1.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest

from dataset_building.recordio import (
    MAGIC,
    RecordReader,
    RecordWriter,
    frame,
    pack,
    read_index,
    read_property,
    unframe,
    unpack,
    write_property,
)

M = struct.pack("<I", 0xCED7230A)


def lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", cflag << 29 | length)


def test_magic_bytes_and_a_whole_record_padded_to_four() -> None:
    assert M == bytes.fromhex("0a23d7ce") and MAGIC == 0xCED7230A
    assert frame(b"hello") == M + lrec(0, 5) + b"hello\0\0\0"
    assert frame(b"") == M + lrec(0, 0)
    assert frame(b"abcd") == M + lrec(0, 4) + b"abcd"


@pytest.mark.parametrize("payload, expected", [
    (b"abcd" + M + b"xyz", M + lrec(1, 4) + b"abcd" + M + lrec(3, 3) + b"xyz\0"),
    (M, M + lrec(1, 0) + M + lrec(3, 0)),
    (M + M, M + lrec(1, 0) + M + lrec(2, 0) + M + lrec(3, 0)),
    (b"abcd" + M + b"ef" + M, M + lrec(1, 4) + b"abcd" + M + lrec(3, 6) + b"ef" + M + b"\0\0"),  # 2nd not aligned
    (b"ab" + M + b"cd", M + lrec(0, 8) + b"ab" + M + b"cd"),  # not at a multiple of 4: kept whole
])
def test_payloads_are_cut_at_aligned_magic_numbers(payload: bytes, expected: bytes) -> None:
    assert frame(payload) == expected
    assert unframe(io.BytesIO(expected)) == payload


def test_cuts_equal_a_scan_of_every_aligned_position() -> None:
    """Random payloads with magic numbers planted anywhere (overlapping, unaligned): the parts are cut exactly
    at the 4-aligned ones, as dmlc-core's writer scans every 4th position."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        payload = bytearray(rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes())
        for at in rng.integers(0, len(payload) + 1, int(rng.integers(0, 6))):
            payload[at:at] = M
        payload = bytes(payload)
        cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == M]
        ends = [*cuts[1:], len(payload)] if cuts else []
        pieces = [payload[: cuts[0]] if cuts else payload] + [payload[a + 4 : b] for a, b in zip(cuts, ends, strict=True)]
        flags = [0] if not cuts else [1] + [2] * (len(cuts) - 1) + [3]
        expected = b"".join(M + lrec(f, len(d)) + d + b"\0" * (-len(d) % 4)
                            for f, d in zip(flags, pieces, strict=True))
        assert frame(payload) == expected
        assert unframe(io.BytesIO(expected)) == payload


def test_pack_follows_mxnet_header_layout() -> None:
    record = pack(17, b"IMG", key=5)
    assert record == struct.pack("<IfQQ", 0, 17.0, 5, 0) + b"IMG" and len(record) == 24 + 3
    header, image = unpack(record)
    assert (header.flag, header.labels, header.id, header.id2, image) == (0, (17.0,), 5, 0, b"IMG")
    multi = pack((101, 151))
    assert multi == struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 101.0, 151.0)
    header, image = unpack(multi)
    assert (header.flag, header.labels, image) == (2, (101.0, 151.0), b"")


@pytest.mark.parametrize("label", [0.5, -1, 2**24])
def test_labels_that_float32_cannot_hold_exactly_are_refused(label: float) -> None:
    with pytest.raises(ValueError, match=r"integers in \[0, 2\*\*24\)"):
        pack(label, b"")


def test_writer_index_points_at_each_record(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payloads = {key: pack(key % 3, rng.bytes(int(rng.integers(0, 40))) + M * int(key == 2), key=key)
                for key in range(6)}
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as writer:
        offsets = {key: writer.write(key, p) for key, p in payloads.items()}
    raw = (tmp_path / "a.rec").read_bytes()
    lines = (tmp_path / "a.idx").read_text().splitlines()
    assert lines == [f"{key}\t{offsets[key]}" for key in payloads]
    assert read_index(tmp_path / "a.idx") == offsets
    assert all(raw[o : o + 4] == M and o % 4 == 0 for o in offsets.values())
    assert len(raw) == sum(len(frame(p)) for p in payloads.values())
    reader = RecordReader(tmp_path / "a.rec")
    assert {key: reader.read(key) for key in reversed(reader.keys)} == payloads
    assert reader.image_keys() == list(range(6))  # record 0 is an image (flag 0): every key


def test_header_record_selects_image_keys_like_arcface_torch(tmp_path: Path) -> None:
    with RecordWriter(tmp_path / "t.rec", tmp_path / "t.idx") as writer:
        writer.write(0, pack((1, 1)))
        for key in (1, 2, 3):
            writer.write(key, pack(0, b"x", key=key))
        writer.write(4, pack((1, 4), key=4))  # an identity record
        writer.write_at(0, pack((4, 5)))
    reader = RecordReader(tmp_path / "t.rec", tmp_path / "t.idx")
    assert unpack(reader.read(0))[0].labels == (4.0, 5.0)
    assert reader.image_keys() == [1, 2, 3]


def test_damaged_files_raise_one_clear_line(tmp_path: Path) -> None:
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as writer:
        writer.write(0, pack(1, b"0123456789"))
        writer.write(1, pack(2, b"abc"))
    raw = (tmp_path / "a.rec").read_bytes()
    (tmp_path / "a.rec").write_bytes(raw[:-6])
    with pytest.raises(ValueError, match="truncated .rec"):
        RecordReader(tmp_path / "a.rec").read(1)
    (tmp_path / "a.idx").write_text("0\t0\n1\t6\n")
    with pytest.raises(ValueError, match="expected the RecordIO magic"):
        RecordReader(tmp_path / "a.rec").read(1)
    (tmp_path / "a.idx").write_text("0 0\n")
    with pytest.raises(ValueError, match=r"a.idx:1: expected '<key>\\t<offset>'"):
        RecordReader(tmp_path / "a.rec")
    with pytest.raises(FileNotFoundError, match="index file .*b.idx does not exist"):
        RecordReader(tmp_path / "a.rec", tmp_path / "b.idx")


def test_property_round_trip(tmp_path: Path) -> None:
    write_property(tmp_path / "property", 10000, 112, 112)
    assert (tmp_path / "property").read_text() == "10000,112,112\n"
    assert read_property(tmp_path / "property") == (10000, 112, 112)
    (tmp_path / "property").write_text("10000;112")
    with pytest.raises(ValueError, match="expected '<num_classes>,<height>,<width>'"):
        read_property(tmp_path / "property")
