"""export_dataset: round trips (rec, tar shards, folders), kill-and-resume, two processes + merge, bad inputs."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import dataset_building.shards as shards
from dataset_building.export import export_dataset
from dataset_building.recordio import RecordReader, read_property, unpack
from dataset_building.shards import ShardPlan, ShardSetWriter
from dataset_building.webdataset import iter_samples
from utils.config import compose
from utils.image_io import block_name, read_identity, write_block

SIZE = 16
COUNTS = {"id0": 3, "id1": 5, "id2": 2, "id10": 4, "id3": 1}  # natural order: id0 id1 id2 id3 id10
ORDER = ["id0", "id1", "id2", "id3", "id10"]


def images_of(identity: str, n: int) -> np.ndarray:
    return np.random.default_rng(int(identity[2:])).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    """Class folders ``<identity>/<k>.png`` of random 16x16 images."""
    root = tmp_path / "folders"
    for identity, n in COUNTS.items():
        (root / identity).mkdir(parents=True)
        for k, image in enumerate(images_of(identity, n)):
            Image.fromarray(image).save(root / identity / f"{k}.png")
    return root


def run(src: Path, out: Path, fmt: str, *extra: str) -> dict | None:
    cfg = compose("export_config", [f"export.input={src}", f"export.output={out}", f"export.format={fmt}",
                                    "export.image_format=png", f"export.image_size={SIZE}",
                                    "export.identities_per_shard=2", *extra])
    return export_dataset(cfg)


def expected_samples() -> list[tuple[int, bytes]]:
    """(label, RGB bytes) of every image in label order."""
    return [(label, image.tobytes()) for label, identity in enumerate(ORDER)
            for image in images_of(identity, COUNTS[identity])]


def decode(data: bytes) -> bytes:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).tobytes()


def read_rec(out: Path) -> list[tuple[int, bytes]]:
    reader = RecordReader(out / "train.rec")
    records = [unpack(reader.read(key)) for key in reader.image_keys()]
    return [(int(header.label), decode(image)) for header, image in records]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, dataset cards left out: they name their own folder (tests/dataset_building/test_card.py)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith("dataset_card.")}


def test_folders_to_rec_round_trip(folders: Path, tmp_path: Path) -> None:
    summary = run(folders, tmp_path / "rec", "rec", "export.rec.shuffle_seed=null")
    assert read_rec(tmp_path / "rec") == expected_samples()  # lossless PNG, label order
    assert read_property(tmp_path / "rec" / "property") == (5, SIZE, SIZE)
    assert (summary["num_classes"], summary["num_images"]) == (5, 15)
    assert summary["images_per_identity"] == {"min": 1, "max": 5}
    reader = RecordReader(tmp_path / "rec" / "train.rec")
    header, _ = unpack(reader.read(0))
    assert header.labels == (16.0, 21.0) and sorted(reader.keys) == list(range(21))
    ranges = [unpack(reader.read(key))[0].labels for key in range(16, 21)]
    assert ranges == [(1.0, 4.0), (4.0, 9.0), (9.0, 11.0), (11.0, 12.0), (12.0, 16.0)]
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["dataset_card.json", "dataset_card.md",
                                                                    "export_plan.json", "export_summary.json",
                                                                    "property", "train.idx", "train.rec"]
    before = tree(tmp_path / "rec")
    assert run(folders, tmp_path / "rec", "rec", "export.rec.shuffle_seed=null") == summary  # done: nothing to do
    assert tree(tmp_path / "rec") == before


def test_a_rerun_with_other_settings_is_refused(folders: Path, tmp_path: Path) -> None:
    run(folders, tmp_path / "rec", "rec", "export.rec.shuffle_seed=null")
    with pytest.raises(ValueError, match=r"holds an export with other settings \(image_format: \['png'\] there, "
                                         r"\['jpg'\] now\); use a new export.output"):
        run(folders, tmp_path / "rec", "rec", "export.image_format=jpg")
    with pytest.raises(ValueError, match=r"was merged with \{'shuffle_seed': None, 'header': True\}, not "
                                         r"\{'shuffle_seed': 4, 'header': True\}"):
        run(folders, tmp_path / "rec", "rec", "export.rec.shuffle_seed=4")
    (folders / "id11").mkdir()
    Image.fromarray(images_of("id11", 1)[0]).save(folders / "id11" / "0.png")
    with pytest.raises(ValueError, match=r"other settings \(identities, names_sha256: \[5, '[0-9a-f]{64}'\] there"):
        run(folders, tmp_path / "rec", "rec")


def test_shuffled_rec_keeps_samples_and_dali_layout_has_no_header(folders: Path, tmp_path: Path) -> None:
    run(folders, tmp_path / "a", "rec", "export.rec.shuffle_seed=5")
    shuffled = read_rec(tmp_path / "a")
    assert shuffled != expected_samples() and sorted(shuffled) == sorted(expected_samples())
    run(folders, tmp_path / "b", "rec", "export.rec.shuffle_seed=5", "export.rec.header=false")
    reader = RecordReader(tmp_path / "b" / "train.rec")
    assert reader.keys == list(range(15)) and unpack(reader.read(0))[0].flag == 0
    assert read_rec(tmp_path / "b") == shuffled


def test_tar_shards_read_by_webdataset_and_by_our_reader(folders: Path, tmp_path: Path) -> None:
    summary = run(folders, tmp_path / "wds", "webdataset")
    tars = sorted((tmp_path / "wds").glob("*.tar"))
    assert [t.name for t in tars] == [s["file"] for s in summary["shards"]] == [f"shard-00000{s}.tar" for s in range(3)]
    assert [s["images"] for s in summary["shards"]] == [8, 3, 4]
    theirs = [(s["cls"], np.asarray(s["png"]).tobytes(), s["__key__"])
              for s in wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode("rgb8")]
    assert [(label, image) for label, image, _ in theirs] == expected_samples()
    assert [key for _, _, key in theirs][:4] == ["id0/0", "id0/1", "id0/2", "id1/0"]
    ours = [(int(f["cls"]), decode(f["png"])) for t in tars for _, f in iter_samples(t)]
    assert ours == expected_samples()


def test_blocks_and_jpeg_and_selection(folders: Path, tmp_path: Path) -> None:
    blocks = tmp_path / "blocks"
    for identity, n in COUNTS.items():
        write_block(blocks, identity, images_of(identity, n))
    run(blocks, tmp_path / "sel", "folders", "export.identities=2", "export.images_per_identity=3")
    assert sorted(p.name for p in (tmp_path / "sel").iterdir()) == ["dataset_card.json", "dataset_card.md",
                                                                    "export_plan.json", "export_summary.json", "id0",
                                                                    "id1"]
    assert len(list((tmp_path / "sel" / "id1").iterdir())) == 3
    smooth = tmp_path / "smooth"
    ramp = np.add.outer(np.arange(SIZE), np.arange(SIZE)) * 4  # (16, 16) in 0..120
    for i, identity in enumerate(ORDER):
        write_block(smooth, identity, np.stack([np.stack([ramp + 10 * i + k, ramp, 120 - ramp], -1).astype(np.uint8)
                                                for k in range(COUNTS[identity])]))
    run(smooth, tmp_path / "jpg", "rec", "export.image_format=jpg", "export.rec.shuffle_seed=null")
    got = read_rec(tmp_path / "jpg")
    want = [(label, tile) for label, identity in enumerate(ORDER)
            for tile in read_identity(smooth / block_name(identity, COUNTS[identity]))]
    assert [label for label, _ in got] == [label for label, _ in want]
    errors = [np.abs(np.frombuffer(g, np.uint8).reshape(SIZE, SIZE, 3).astype(int) - w).mean()
              for (_, g), (_, w) in zip(got, want, strict=True)]
    assert max(errors) < 2.0  # JPEG q95 of smooth images


# renames, rec: 3 per shard (json, idx, rec) x 3 shards, merge (property, idx, rec), summary;
# webdataset: 2 per shard (json, tar) x 3, summary; folders: one per identity, summary
@pytest.mark.parametrize("fmt, fail_at", [("rec", 1), ("rec", 3), ("rec", 7), ("rec", 11), ("rec", 13),
                                          ("webdataset", 2), ("webdataset", 5), ("webdataset", 7), ("folders", 2)])
def test_killed_export_resumes_to_identical_bytes(folders: Path, tmp_path: Path, monkeypatch, fmt: str,
                                                  fail_at: int) -> None:
    keep = ("export.rec.keep_shards=true",)
    run(folders, tmp_path / "clean", fmt, *keep)
    calls = {"n": 0}
    real_replace = os.replace

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt(f"killed in rename {fail_at}")
        real_replace(src, dst)

    monkeypatch.setattr(shards.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        run(folders, tmp_path / "killed", fmt, *keep)
    monkeypatch.setattr(shards.os, "replace", real_replace)
    assert not (tmp_path / "killed" / "export_summary.json").exists()
    if fmt == "rec":
        (tmp_path / "killed" / ".train.rec.k1ll3d.tmp").write_bytes(b"what a SIGKILL during a merge leaves")
    run(folders, tmp_path / "killed", fmt, *keep)
    assert tree(tmp_path / "killed") == tree(tmp_path / "clean")  # no temporaries left, same bytes


def test_stale_temporaries_of_other_tasks_are_left_alone(folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "wds"
    out.mkdir()
    (out / ".shard-000000.tar.abc123.tmp").write_bytes(b"mine")
    (out / ".shard-000001.tar.abc123.tmp").write_bytes(b"task 1's")
    run(folders, out, "webdataset", "export.shard_index=0", "export.num_shards=2")
    assert not (out / ".shard-000000.tar.abc123.tmp").exists() and (out / ".shard-000001.tar.abc123.tmp").exists()
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000002.tar"]


@pytest.mark.parametrize("seed", ["null", "3"])
def test_two_processes_then_merge_equal_one_process(folders: Path, tmp_path: Path, seed: str) -> None:
    args = (f"export.rec.shuffle_seed={seed}", "export.rec.keep_shards=true")
    one = run(folders, tmp_path / "one", "rec", *args)
    assert run(folders, tmp_path / "two", "rec", *args, "export.shard_index=1", "export.num_shards=2") is None
    two = run(folders, tmp_path / "two", "rec", *args, "export.shard_index=0", "export.num_shards=2")
    assert one == two and tree(tmp_path / "one") == tree(tmp_path / "two")
    if seed == "null":  # unshuffled, the merge equals one shard holding every identity, byte for byte
        run(folders, tmp_path / "single", "rec", *args, "export.identities_per_shard=5")
        single = tmp_path / "single" / "shards" / "shard-000000"
        for suffix in (".rec", ".idx"):
            assert (tmp_path / "one" / f"train{suffix}").read_bytes() == single.with_suffix(suffix).read_bytes()


def test_a_generator_pushes_identities_directly(tmp_path: Path) -> None:
    plan = ShardPlan(tuple(ORDER), identities_per_shard=3)
    with ShardSetWriter(tmp_path / "pushed", plan, "webdataset", image_size=SIZE) as writer:
        assert writer.pending() == list(enumerate(ORDER))
        with pytest.raises(ValueError, match="expected identity 'id0' \\(label 0\\) next, got 'id1'"):
            writer.add("id1", images_of("id1", 5))
        with pytest.raises(ValueError, match=r"expected images as an \(N>=1, 16, 16, 3\) uint8 array, found uint8 "
                                             r"\(2, 32, 32, 3\)"):
            writer.add("id0", np.zeros((2, 32, 32, 3), np.uint8))
        for identity in ORDER[:4]:
            writer.add(identity, images_of(identity, COUNTS[identity]))
    assert [p.name for p in (tmp_path / "pushed").glob("*.tar")] == ["shard-000000.tar"]  # shard 1 was not complete
    assert not list((tmp_path / "pushed").glob(".*.tmp"))
    again = ShardSetWriter(tmp_path / "pushed", plan, "webdataset", image_size=SIZE)
    assert again.pending() == [(3, "id3"), (4, "id10")]


def test_bad_inputs_are_one_clear_line(folders: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"export.input=.*missing: no such folder \(expected <identity>/<k>"):
        run(tmp_path / "missing", tmp_path / "out", "rec")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"export.input=.*empty: found no identities"):
        run(tmp_path / "empty", tmp_path / "out", "rec")
    (folders / "x..y").mkdir()
    Image.fromarray(images_of("id0", 1)[0]).save(folders / "x..y" / "0.png")
    with pytest.raises(ValueError, match=r"identity name .*'x..y' contains '..'"):
        run(folders, tmp_path / "out", "rec")
    with pytest.raises(ValueError, match=r"identity name .*'a/b' contains a path separator"):
        ShardPlan(("a/b",), 1)
    (folders / "x..y" / "0.png").unlink()
    (folders / "x..y").rmdir()
    with pytest.raises(ValueError, match="export.format must be one of .*found 'lmdb'"):
        run(folders, tmp_path / "out", "lmdb")
    with pytest.raises(ValueError, match="set both export.shard_index and export.num_shards"):
        run(folders, tmp_path / "out", "rec", "export.shard_index=1")
    with pytest.raises(ValueError, match=r"identity 'id0': expected images as an \(N>=1, 112, 112, 3\)"):
        run(folders, tmp_path / "out", "rec", "export.image_size=112")
