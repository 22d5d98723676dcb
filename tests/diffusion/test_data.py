"""Face/embedding dataset: stem matching, flips, [-1, 1] range, unreadable images, step-indexed data order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import DatasetError, FaceEmbeddingDataset, StepBatchSampler
from embedding.files import save_embeddings


def make_folder(root: Path, image_names: list[str], embedding_names: list[str], size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for name in image_names:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    save_embeddings(root / "emb.npz", embedding_names, rng.normal(size=(len(embedding_names), 4)).astype(np.float32))
    return root


def test_items_are_matched_by_stem_scaled_and_flipped(tmp_path: Path) -> None:
    make_folder(tmp_path, ["b", "a", "c"], ["c", "a", "b"])
    ds = FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=8)
    assert ds.names == ["a", "b", "c"]
    x, context = ds[(1, False)]
    pixels = np.asarray(Image.open(tmp_path / "images" / "b.png"), dtype=np.float32)
    torch.testing.assert_close(x, torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1), atol=1e-6, rtol=0)
    flipped, _ = ds[(1, True)]
    torch.testing.assert_close(flipped, torch.flip(x, dims=[2]))
    embeddings = dict(zip(["c", "a", "b"], np.load(tmp_path / "emb.npz")["embeddings"]))
    torch.testing.assert_close(context, torch.from_numpy(embeddings["b"]))
    assert ds[(0, False)][0].shape == (3, 8, 8) and ds.context_dim == 4


def test_resize_to_image_size(tmp_path: Path) -> None:
    make_folder(tmp_path, ["a"], ["a"], size=12)
    assert FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=8)[(0, False)][0].shape == (3, 8, 8)


def test_unmatched_are_counted_and_named(tmp_path: Path) -> None:
    make_folder(tmp_path, ["a", "b", "only_image"], ["a", "b", "only_emb1", "only_emb2"])
    with pytest.raises(DatasetError, match=r"1 images without an embedding \[only_image\], 2 embeddings without an image "
                                           r"\[only_emb1, only_emb2\]"):
        FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=8)
    assert len(FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=8, allow_unmatched=True)) == 2


def test_missing_paths_name_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"image folder .*nope.* does not exist.*extract_face_embeddings_from_dir\.py"):
        FaceEmbeddingDataset(tmp_path / "nope", tmp_path / "emb.npz")


def test_unreadable_images_skip_or_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_folder(tmp_path, ["a", "b", "c"], ["a", "b", "c"])
    (tmp_path / "images" / "b.png").write_bytes(b"not a png")
    ds = FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=8, on_unreadable="skip")
    x, _ = ds[(1, False)]
    torch.testing.assert_close(x, ds.read_image(2))  # substituted by the next readable image
    assert "b.png" in caplog.text
    ds = FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=8, on_unreadable="stop")
    with pytest.raises(DatasetError, match=r"unreadable image .*b\.png"):
        ds[(1, False)]


def test_data_order_depends_on_step_only_and_splits_across_ranks() -> None:
    one = StepBatchSampler(20, batch_size=4, seed=3)
    assert one.steps_per_epoch == 5
    it = iter(StepBatchSampler(20, batch_size=4, seed=3, start_step=7))
    assert next(it) == one.batch_at(7) and next(it) == one.batch_at(8)
    epoch = [i for s in range(5) for i, _ in one.batch_at(s)]
    assert sorted(epoch) == list(range(20))  # every item once per epoch
    assert one.batch_at(5) != one.batch_at(0)  # a new permutation next epoch
    two = [StepBatchSampler(20, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    assert two[0].batch_at(7) + two[1].batch_at(7) == one.batch_at(7)
    flips = [f for s in range(50) for _, f in one.batch_at(s)]
    assert 0.35 < np.mean(flips) < 0.65


def test_skipped_image_comes_with_the_context_of_the_image_used(tmp_path: Path) -> None:
    """Policy skip: the substitute image must not be trained with the unreadable image's identity context."""
    make_folder(tmp_path, ["a", "b", "c"], ["a", "b", "c"])
    (tmp_path / "images" / "b.png").write_bytes(b"not a png")
    ds = FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=8, on_unreadable="skip")
    for flip in (False, True):
        x, context = ds[(1, flip)]
        expected = ds.read_image(2)
        torch.testing.assert_close(x, torch.flip(expected, dims=[2]) if flip else expected, rtol=0, atol=0)
        torch.testing.assert_close(context, ds.contexts[2], rtol=0, atol=0)  # c's context, not b's
    x, context = ds[(0, False)]
    torch.testing.assert_close(context, ds.contexts[0], rtol=0, atol=0)
    (tmp_path / "images" / "c.png").write_bytes(b"not a png either")
    _, context = ds[(1, False)]  # b and c unreadable: wraps around to a
    torch.testing.assert_close(context, ds.contexts[0], rtol=0, atol=0)
