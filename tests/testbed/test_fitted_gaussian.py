"""contexts.sources.fitted_gaussian: identity vectors of nobody drawn where the training identities lie."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contexts.sources import contexts_from_config, fitted_gaussian, synthetic_uniform
from embedding.files import load_embeddings, save_embeddings
from utils.config import compose


def clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors around one direction with an anisotropic spread, like dlib's un-centred space (mean cos ~0.75)."""
    rng = np.random.default_rng(seed)
    mean = np.zeros(dim)
    mean[0] = 1.0
    spread = np.linspace(0.25, 0.01, dim - 1)  # decreasing standard deviations off the mean direction
    x = mean + np.concatenate([np.zeros((n, 1)), rng.normal(size=(n, dim - 1)) * spread], axis=1)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    e = clustered(4000)
    return save_embeddings(tmp_path / "train.npz", [str(i) for i in range(len(e))], e)


def test_samples_match_the_training_distribution(train_file: Path) -> None:
    train = load_embeddings(train_file).embeddings.astype(np.float64)
    made = fitted_gaussian(train_file, 4000, seed=1)
    assert made.embeddings.shape == (4000, 16) and made.embeddings.dtype == np.float32
    contexts = made.embeddings.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(contexts, axis=1), 1.0, atol=1e-6)
    # first and second moments of the unit vectors agree with the training set's within sampling error
    np.testing.assert_allclose(contexts.mean(0), train.mean(0), atol=0.03)
    cov_c, cov_t = np.cov(contexts, rowvar=False), np.cov(train, rowvar=False)
    assert np.linalg.norm(cov_c - cov_t) / np.linalg.norm(cov_t) < 0.1
    # pairwise cosine: ~0.75 like the training set, while uniform vectors on the sphere are near 0
    def mean_pairwise(x: np.ndarray) -> float:
        s = x[:500] @ x[:500].T
        return float(s[np.triu_indices(500, k=1)].mean())
    assert abs(mean_pairwise(contexts) - mean_pairwise(train)) < 0.02
    assert abs(mean_pairwise(synthetic_uniform(500, 16, seed=0).embeddings.astype(np.float64))) < 0.02
    nearest_train = (contexts[:200] @ train.T).max(axis=1)
    assert np.median(nearest_train) > 0.9  # every context lies among training identities, not in a void


def test_seeded_named_and_reduced_by_components_and_spread(train_file: Path) -> None:
    a = fitted_gaussian(train_file, 50, seed=3)
    assert a.names[:2] == ["0", "1"]
    assert np.array_equal(a.embeddings, fitted_gaussian(train_file, 50, seed=3).embeddings)
    assert not np.array_equal(a.embeddings, fitted_gaussian(train_file, 50, seed=4).embeddings)
    train = load_embeddings(train_file).embeddings.astype(np.float64)
    mu = train.mean(0)
    # spread 0: every context is the normalised training mean
    np.testing.assert_allclose(fitted_gaussian(train_file, 5, spread=0.0).embeddings, np.tile(mu / np.linalg.norm(mu), (5, 1)),
                               atol=1e-6)
    # one component: contexts lie in the plane of the mean and the first principal axis
    _, vectors = np.linalg.eigh(np.cov(train, rowvar=False))
    plane = np.stack([mu, vectors[:, -1]], axis=1)  # (D, 2)
    one = fitted_gaussian(train_file, 20, components=1).embeddings.astype(np.float64)
    residual = one - one @ plane @ np.linalg.pinv(plane)
    assert np.abs(residual).max() < 1e-5
    assert np.abs(one - one.mean(0)).max() > 0.1  # ... and still differ along it


def test_bad_inputs_are_one_clear_line(tmp_path: Path, train_file: Path) -> None:
    with pytest.raises(ValueError, match=r"pca_components must be in \[1, 16\].*found 17"):
        fitted_gaussian(train_file, 5, components=17)
    with pytest.raises(ValueError, match="spread must be a finite number >= 0, found -1.0"):
        fitted_gaussian(train_file, 5, spread=-1.0)
    one = save_embeddings(tmp_path / "one.npz", ["a"], np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="holds 1 embedding.*at least 2"):
        fitted_gaussian(one, 5)
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        fitted_gaussian(tmp_path / "missing.npz", 5)
    with pytest.raises(ValueError, match="needs contexts.embeddings_file"):
        contexts_from_config(compose("contexts_config", ["contexts.source=fitted_gaussian", f"contexts.out_dir={tmp_path}"]))


def test_script_config_writes_the_fitted_contexts(tmp_path: Path, train_file: Path) -> None:
    cfg = compose("contexts_config", [
        "contexts.source=fitted_gaussian", f"contexts.embeddings_file={train_file}", "contexts.n=30",
        "contexts.seed=2", "contexts.pca_components=8", "contexts.spread=0.5", f"contexts.out_dir={tmp_path}",
    ])
    _, npz = contexts_from_config(cfg)
    assert npz.name == "random_fitted_gaussian_30.npz"
    expected = fitted_gaussian(train_file, 30, seed=2, components=8, spread=0.5)
    assert np.array_equal(load_embeddings(npz).embeddings, expected.embeddings)
