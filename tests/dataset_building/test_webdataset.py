"""WebDataset tar shards: reproducible bytes, our minimal tar reader, ``webdataset`` as an independent reader."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from dataset_building.webdataset import (
    TarShardWriter,
    image_and_label,
    iter_samples,
    sample_key,
    split_key,
)

LONG = "identity_" + "x" * 120  # longer than a ustar name field: needs a pax path record


def _write(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with TarShardWriter(path) as writer:
        for key, fields in samples:
            writer.add(key, fields)
    return path


SAMPLES = [(sample_key(identity, k), {"png": f"{identity}-{k}".encode() * (k + 1), "cls": str(label).encode()})
           for label, identity in enumerate(["id0", "id.1", LONG]) for k in range(3)]


def test_keys_end_at_the_first_dot_of_the_file_name() -> None:
    assert split_key("id7/3.png") == ("id7/3", "png")
    assert split_key("id.7/3.seg.png") == ("id.7/3", "seg.png")
    with pytest.raises(ValueError, match="has no '.<field>'"):
        split_key("id7/3")


def test_shards_are_byte_reproducible_with_fixed_metadata(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.tar", SAMPLES).read_bytes()
    b = _write(tmp_path / "b.tar", SAMPLES).read_bytes()
    assert a == b and len(a) % 10240 == 0  # tar files are whole 10 KiB records
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [f"{key}.{f}" for key, fields in SAMPLES for f in fields]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o444)}


def test_our_reader_and_webdataset_read_the_same_samples(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.tar", SAMPLES)
    assert list(iter_samples(path)) == SAMPLES
    theirs = [(s["__key__"], {"png": s["png"], "cls": s["cls"]}) for s in wds.WebDataset(str(path), shardshuffle=False)]
    assert theirs == SAMPLES
    decoded = [s["cls"] for s in wds.WebDataset(str(path), shardshuffle=False).decode()]
    assert decoded == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert image_and_label(*SAMPLES[4]) == (b"id.1-1id.1-1", 1)


def test_damaged_or_incomplete_shards_raise_one_clear_line(tmp_path: Path) -> None:
    raw = bytearray(_write(tmp_path / "s.tar", SAMPLES[:2]).read_bytes())
    (tmp_path / "cut.tar").write_bytes(bytes(raw[:700]))
    with pytest.raises(ValueError, match="cut.tar: the file ends inside a member"):
        list(iter_samples(tmp_path / "cut.tar"))
    (tmp_path / "cut.tar").write_bytes(bytes(raw[:2048]))  # whole members, no end-of-archive block
    with pytest.raises(ValueError, match="ends before the tar end-of-archive block"):
        list(iter_samples(tmp_path / "cut.tar"))
    raw[0] ^= 1
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum does not match"):
        list(iter_samples(tmp_path / "bad.tar"))
    with pytest.raises(ValueError, match=r"'a/0' needs an image \(.png/.jpg\) and a .cls label, found \['cls'\]"):
        image_and_label("a/0", {"cls": b"3"})
