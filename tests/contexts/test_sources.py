"""contexts.sources: synthetic/authentic/from_images contexts, the greedy separability filter, file formats."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contexts.sources import (
    authentic,
    contexts_from_config,
    from_images,
    load_contexts,
    save_original_contexts,
    separability_filter,
    synthetic_uniform,
)
from embedding.files import EmbeddingSet, load_embeddings, save_embeddings
from utils.checkpoint import CheckpointError
from utils.config import compose


def test_synthetic_uniform_is_unit_norm_and_seeded() -> None:
    a = synthetic_uniform(100, 512, seed=3)
    assert a.embeddings.shape == (100, 512) and a.names[:3] == ["0", "1", "2"]
    np.testing.assert_allclose(np.linalg.norm(a.embeddings, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(a.embeddings, synthetic_uniform(100, 512, seed=3).embeddings)
    assert not np.array_equal(a.embeddings, synthetic_uniform(100, 512, seed=4).embeddings)


def naive_greedy(x: np.ndarray, threshold: float) -> list[int]:
    kept: list[int] = []
    for i in range(len(x)):
        if all(x[i] @ x[j] < threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("chunk_size", [7, 2048])
def test_separability_filter_is_below_threshold_and_greedy_maximal(chunk_size: int) -> None:
    x = synthetic_uniform(600, 16, seed=0).embeddings
    threshold = 0.5
    kept = separability_filter(x, threshold, chunk_size=chunk_size)
    assert 0 < len(kept) < len(x)
    sims = x @ x.T
    kept_sims = sims[np.ix_(kept, kept)]
    assert (kept_sims[~np.eye(len(kept), dtype=bool)] < threshold).all()  # every kept pair is below
    dropped = np.setdiff1d(np.arange(len(x)), kept)
    assert (sims[np.ix_(dropped, kept)].max(axis=1) >= threshold).all()  # nothing more could be added
    assert kept.tolist() == naive_greedy(x, threshold)  # the greedy set in file order


def test_original_format_round_trip(tmp_path: Path) -> None:
    contexts = synthetic_uniform(5, 512)
    path = save_original_contexts(tmp_path / "random_synthetic_uniform_5.npy", contexts)
    # the original sample.py unpickles the file fully and calls torch.from_numpy(contexts[id]): a dict of numpy arrays
    with torch.serialization.safe_globals([np.ndarray, np.dtype, np._core.multiarray._reconstruct, type(np.dtype(np.float32))]):
        raw = torch.load(path, weights_only=True)
    assert list(raw) == contexts.names and isinstance(raw["0"], np.ndarray) and raw["0"].dtype == np.float32
    back = load_contexts(path)
    assert back.names == contexts.names and np.array_equal(back.embeddings, contexts.embeddings)
    ours = save_embeddings(tmp_path / "c.npz", contexts.names, contexts.embeddings)
    assert np.array_equal(load_contexts(ours).embeddings, contexts.embeddings)


def test_damaged_original_file_is_one_clear_line(tmp_path: Path) -> None:
    path = save_original_contexts(tmp_path / "c.npy", synthetic_uniform(3, 8))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises((CheckpointError, ValueError), match="c.npy") as err:
        load_contexts(path)
    assert "\n" not in str(err.value)


def test_authentic_first_or_random(tmp_path: Path) -> None:
    names = [f"img{i}" for i in range(10)]
    path = save_embeddings(tmp_path / "real.npz", names, 3 * np.random.default_rng(0).normal(size=(10, 8)))
    first = authentic(path, 4)
    assert first.names == names[:4]
    np.testing.assert_allclose(np.linalg.norm(first.embeddings, axis=1), 1.0, atol=1e-6)
    picked = authentic(path, 4, random=True, seed=1)
    assert len(set(picked.names)) == 4 and picked.names == authentic(path, 4, random=True, seed=1).names
    with pytest.raises(ValueError, match="holds 10 embeddings"):
        authentic(path, 11)


def test_from_images_embeds_each_file(tmp_path: Path) -> None:
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")

    def mean_colour(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1, 3).mean(axis=1) + 1.0

    contexts = from_images(sorted(tmp_path.glob("*.png")), mean_colour, batch_size=2)
    assert contexts.names == ["0", "1", "2", "3", "4"] and contexts.embeddings.shape == (5, 3)
    np.testing.assert_allclose(np.linalg.norm(contexts.embeddings, axis=1), 1.0, atol=1e-6)


def test_script_config_writes_both_formats(tmp_path: Path) -> None:
    cfg = compose("contexts_config", [f"contexts.out_dir={tmp_path}", "contexts.n=50", "contexts.dim=128",
                                      "contexts.separability_threshold=0.2"])
    original, ours = contexts_from_config(cfg)
    a, b = load_contexts(original), load_embeddings(ours)
    assert isinstance(a, EmbeddingSet) and a.names == b.names and np.array_equal(a.embeddings, b.embeddings)
    assert original.name == f"random_synthetic_uniform_{len(a)}.npy" and a.dim == 128
