import numpy as np
import pytest
import torch

from embedding.files import load_embeddings, save_embeddings


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".npy"])
def test_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 16)).astype(np.float32)
    names = [f"{i:05d}" for i in range(5)]
    path = save_embeddings(tmp_path / f"e{suffix}", names, emb)
    back = load_embeddings(path)
    np.testing.assert_array_equal(back.embeddings, emb)
    assert back.names == (names if suffix != ".npy" else [str(i) for i in range(5)])
    assert not list(tmp_path.glob(".*")), "temporary file left behind"


def test_labels_round_trip(tmp_path):
    emb = np.eye(4, dtype=np.float32)
    back = load_embeddings(save_embeddings(tmp_path / "e.npz", list("abcd"), emb, labels=[0, 0, 1, 1]))
    np.testing.assert_array_equal(back.labels, [0, 0, 1, 1])


def test_reads_original_dict_format(tmp_path):
    torch.save({"00001": torch.ones(512), "00002": torch.zeros(512)}, tmp_path / "emb.pt")
    back = load_embeddings(tmp_path / "emb.pt")
    assert back.names == ["00001", "00002"] and back.embeddings.shape == (2, 512)


def test_rejects_mixed_dimensions(tmp_path):
    torch.save({"a": torch.ones(512), "b": torch.ones(128)}, tmp_path / "emb.pt")
    with pytest.raises(ValueError, match=r"emb\.pt.*different dimensions"):
        load_embeddings(tmp_path / "emb.pt")


def test_rejects_pickled_object_npy(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy"):
        load_embeddings(tmp_path / "obj.npy")


def test_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="2 names for 3 embeddings"):
        save_embeddings(tmp_path / "e.npz", ["a", "b"], np.zeros((3, 4), np.float32))
    assert not (tmp_path / "e.npz").exists()


def test_reads_original_contexts_npy_written_by_torch_save(tmp_path):
    """The original's contexts '.npy' is a torch.save'd dict of numpy arrays, not a numpy file."""
    rng = np.random.default_rng(1)
    original = {f"{i}": rng.standard_normal(512).astype(np.float32) for i in range(3)}
    torch.save(original, tmp_path / "random_synthetic_uniform_3.npy")
    back = load_embeddings(tmp_path / "random_synthetic_uniform_3.npy")
    assert back.names == ["0", "1", "2"]
    np.testing.assert_array_equal(back.embeddings, np.stack(list(original.values())))
