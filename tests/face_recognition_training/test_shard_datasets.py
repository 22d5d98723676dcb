"""FR training reads class folders, insightface RecordIO and tar shards alike: same samples, labels and transforms."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dataset_building.export import export_dataset
from face_recognition_training.dataset import EpochLoader, build_transform
from face_recognition_training.shard_data import (
    RecordDataset,
    StreamLoader,
    TarShardStream,
    build_training_data,
    detect_format,
)
from utils.config import compose

SIZE = 24
IDENTITIES, IMAGES = 5, 6  # 30 images; zero-padded names, so sorted and natural order agree


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tiny dataset as class folders, a label-ordered .rec, a shuffled .rec and tar shards."""
    tmp = tmp_path_factory.mktemp("fr_sets")
    rng = np.random.default_rng(0)
    for i in range(IDENTITIES):
        (tmp / "folders" / f"id_{i:02d}").mkdir(parents=True)
        for k in range(IMAGES):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
                tmp / "folders" / f"id_{i:02d}" / f"{k:02d}.png")
    out = {"folders": tmp / "folders"}
    for name, fmt, seed in (("rec", "rec", "null"), ("rec_shuffled", "rec", "7"), ("webdataset", "webdataset", "0")):
        out[name] = tmp / name
        export_dataset(compose("export_config", [
            f"export.input={tmp / 'folders'}", f"export.output={out[name]}", f"export.format={fmt}",
            "export.image_format=png", f"export.image_size={SIZE}", "export.identities_per_shard=1",
            f"export.rec.shuffle_seed={seed}"]))
    return out


def data_cfg(root: Path, **extra):
    return OmegaConf.create({"root": str(root), "format": "auto", "width": 0, "depth": 0, "augment": "none",
                             "random_erasing": 0.0, "image_size": SIZE, "num_workers": 0, "shuffle_buffer": 8, **extra})


def epoch_batches(root: Path, batch_size: int = 5, epoch: int = 0, **extra) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(123)  # the flips of num_workers=0 come from the global generator
    _, loader = build_training_data(data_cfg(root, **extra), batch_size, seed=3)
    return list(loader.epoch(epoch))


def labels_of(batches: list) -> list[int]:
    return [int(y) for _, y in batches for y in y]


def test_the_format_is_detected_from_the_folder(sets: dict[str, Path]) -> None:
    assert {name: detect_format(root) for name, root in sets.items()} == {
        "folders": "folders", "rec": "rec", "rec_shuffled": "rec", "webdataset": "webdataset"}
    dataset, loader = build_training_data(data_cfg(sets["rec"]), 5)
    assert isinstance(dataset, RecordDataset) and isinstance(loader, EpochLoader)
    dataset, loader = build_training_data(data_cfg(sets["webdataset"]), 5)
    assert isinstance(dataset, TarShardStream) and isinstance(loader, StreamLoader)
    assert (dataset.num_classes, len(dataset), len(loader)) == (IDENTITIES, 30, 6)


def test_one_epoch_sees_the_same_samples_from_every_format(sets: dict[str, Path]) -> None:
    folders = epoch_batches(sets["folders"])
    expected = Counter(labels_of(folders))
    assert expected == Counter({i: IMAGES for i in range(IDENTITIES)})
    for name in ("rec", "rec_shuffled", "webdataset"):
        batches = epoch_batches(sets[name])
        assert len(batches) == len(folders) == 6, name
        assert Counter(labels_of(batches)) == expected, name
        assert all(x.shape == (5, 3, SIZE, SIZE) and -1 <= x.min() and x.max() <= 1 for x, _ in batches), name


def test_rec_in_label_order_gives_the_folder_batches_exactly(sets: dict[str, Path]) -> None:
    for epoch in (0, 1):
        folders, rec = epoch_batches(sets["folders"], epoch=epoch), epoch_batches(sets["rec"], epoch=epoch)
        for (x_f, y_f), (x_r, y_r) in zip(folders, rec, strict=True):
            assert torch.equal(y_f, y_r) and torch.equal(x_f, x_r)  # same images, labels and flips


def test_the_stream_is_seeded_per_epoch_and_the_buffer_bounds_the_mixing(sets: dict[str, Path]) -> None:
    order = [labels_of(epoch_batches(sets["webdataset"], epoch=e)) for e in (0, 0, 1)]
    assert order[0] == order[1] and order[0] != order[2]
    unshuffled = labels_of(epoch_batches(sets["webdataset"], shuffle_buffer=1))  # whole shards, in the shard order
    assert [unshuffled[i] for i in range(0, 30, IMAGES)] == [unshuffled[i + IMAGES - 1] for i in range(0, 30, IMAGES)]
    assert sorted(set(unshuffled)) == list(range(IDENTITIES))


def test_ranks_take_disjoint_shards_and_the_same_number_of_steps(sets: dict[str, Path]) -> None:
    per_rank = []
    for rank in (0, 1):
        stream = TarShardStream(sets["webdataset"], transform=build_transform(), image_size=SIZE, shuffle_buffer=4,
                                seed=1, rank=rank, world_size=2)
        loader = StreamLoader(stream, batch_size=3, seed=1)
        per_rank.append([int(y) for _, labels in loader.epoch(0) for y in labels])
        assert len(loader) == 4  # 5 one-identity shards of 6: ranks hold 18 and 12 images; both stop at 4 batches
    assert [len(labels) for labels in per_rank] == [12, 12]
    assert not set(per_rank[0]) & set(per_rank[1])  # one identity per shard: disjoint shards, disjoint labels
    assert sorted(s for rank in stream.assignment(0, 0) for worker in rank for s in worker) == list(range(IDENTITIES))


def test_workers_split_a_ranks_shards(sets: dict[str, Path]) -> None:
    stream = TarShardStream(sets["webdataset"], transform=build_transform(), image_size=SIZE, shuffle_buffer=4, seed=1)
    loader = StreamLoader(stream, batch_size=3, seed=1, num_workers=2)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 10  # workers hold 3 and 2 shards: 6 + 4 batches
    assert Counter(labels_of(batches)) == Counter({i: IMAGES for i in range(IDENTITIES)})
    assert [len(w) for w in stream.assignment(0, 2)[0]] == [3, 2]


def test_limits_and_bad_roots_are_one_clear_line(sets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.width=3 but .* \(rec\) holds 5 identities; shards are read whole"):
        build_training_data(data_cfg(sets["rec"], width=3), 5)
    with pytest.raises(ValueError, match=r"data.depth=4 but .* \(webdataset\) holds up to 6 images per identity"):
        build_training_data(data_cfg(sets["webdataset"], depth=4), 5)
    dataset, _ = build_training_data(data_cfg(sets["rec"], width=10000, depth=50), 5)  # the paper's limits fit
    assert len(dataset) == 30
    (tmp_path / "train.rec").write_bytes((sets["rec"] / "train.rec").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"train.idx does not exist \(a RecordIO training set is a folder"):
        RecordDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="export_summary.json is missing or not a webdataset export"):
        TarShardStream(sets["rec"])
    with pytest.raises(ValueError, match="data.format must be one of"):
        build_training_data(data_cfg(sets["rec"], format="lmdb"), 5)
    with pytest.raises(ValueError, match="give some rank fewer than one batch of 64"):
        build_training_data(data_cfg(sets["webdataset"]), 64)
