"""embedding.identity_chunks: an encode.py .npz read identity chunk by identity chunk, and the same from arrays."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from embedding.files import save_embeddings
from embedding.identity_chunks import chunks_from_arrays, chunks_from_npz, split_name, stored_array

COUNTS = [3, 1, 4, 2, 5]


def dataset(seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names ``id<k>/<i>``, (15, 6) embeddings and labels grouped as encode.py writes them."""
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    names = [f"id{label}/{k}" for label, count in enumerate(COUNTS) for k in range(count)]
    return names, np.random.default_rng(seed).standard_normal((len(names), 6)).astype(np.float32), labels


@pytest.mark.parametrize("per_chunk", [1, 2, 5, 100])
def test_npz_chunks_give_back_every_row_in_order(tmp_path: Path, per_chunk: int) -> None:
    names, x, labels = dataset()
    path = save_embeddings(tmp_path / "e.npz", names, x, labels)
    info, chunks = chunks_from_npz(path, per_chunk)
    assert info == {"n_images": 15, "n_identities": 5, "dim": 6}
    chunks = list(chunks)
    assert len(chunks) == -(-5 // per_chunk)
    assert [i for c in chunks for i in c.identities] == [f"id{k}" for k in range(5)]
    assert np.concatenate([c.counts for c in chunks]).tolist() == COUNTS
    assert [i for c in chunks for i in c.images] == [n.split("/")[1] for n in names]
    np.testing.assert_array_equal(np.concatenate([c.embeddings for c in chunks]), x)


def test_stored_array_reads_rows_without_loading_the_file(tmp_path: Path) -> None:
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    path = tmp_path / "a.npz"
    np.savez(path, embeddings=x)
    member = stored_array(path, "embeddings")
    assert member.shape == (10, 4) and member.dtype == np.float32
    np.testing.assert_array_equal(member.read_rows(3, 7), x[3:7])


def test_arrays_in_any_row_order_are_grouped_by_label() -> None:
    names, x, labels = dataset(1)
    perm = np.random.default_rng(2).permutation(len(x))
    chunks = list(chunks_from_arrays(x[perm], labels[perm], [names[i] for i in perm], identities_per_chunk=2))
    assert [i for c in chunks for i in c.identities] == [f"id{k}" for k in range(5)]
    for chunk in chunks:
        start = 0
        for identity, count in zip(chunk.identities, chunk.counts):
            rows = [names.index(f"{identity}/{image}") for image in chunk.images[start : start + count]]
            np.testing.assert_array_equal(chunk.embeddings[start : start + count], x[rows])
            start += count
    unnamed = next(chunks_from_arrays(x, labels, identities_per_chunk=2))
    assert unnamed.identities == ["0", "1"] and unnamed.images == ["0", "1", "2", "0"]


def test_split_name() -> None:
    assert split_name("00012/7") == ("00012", "7") and split_name("face") == ("face", "face")


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    names, x, labels = dataset()
    with pytest.raises(ValueError, match="15 embeddings, labels of shape \\(14,\\)"):
        next(chunks_from_arrays(x, labels[:-1]))
    ungrouped = labels.copy()
    ungrouped[[0, 5]] = ungrouped[[5, 0]]
    path = save_embeddings(tmp_path / "u.npz", names, x, ungrouped)
    with pytest.raises(ValueError, match=r"u.npz: the rows of label \d are not contiguous"):
        chunks_from_npz(path)
    mixed = save_embeddings(tmp_path / "m.npz", names[:2] + ["other/2"] + names[3:], x, labels)
    with pytest.raises(ValueError, match="one label holds images of several identities"):
        list(chunks_from_npz(mixed)[1])
    no_labels = save_embeddings(tmp_path / "n.npz", names, x)
    with pytest.raises(ValueError, match="n.npz: no array 'labels'"):
        chunks_from_npz(no_labels)
    compressed = tmp_path / "c.npz"
    np.savez_compressed(compressed, names=np.asarray(names), embeddings=x, labels=labels)
    with pytest.raises(ValueError, match="compressed and cannot be read row by row"):
        chunks_from_npz(compressed)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz is not a readable .npz file"):
        chunks_from_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        chunks_from_npz(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(path)
