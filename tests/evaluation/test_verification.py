"""k-fold accuracy and TAR@FAR on hand-made scores with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import best_threshold, kfold_accuracy, tar_at_far


def _alternating_labels(n_pairs: int) -> np.ndarray:
    """(N,) bool: genuine, impostor, genuine, ... so every contiguous fold is balanced."""
    return np.arange(n_pairs) % 2 == 0


def test_separable_scores_give_100() -> None:
    is_same = _alternating_labels(200)
    sims = np.where(is_same, 0.8, 0.1) + np.linspace(0, 0.05, 200)
    result = kfold_accuracy(sims, is_same)
    assert result["accuracy_mean"] == 100.0
    assert result["accuracy_std"] == 0.0
    assert len(result["thresholds"]) == 10
    assert all(0.15 < t < 0.8 for t in result["thresholds"])


def test_identical_scores_give_50() -> None:
    is_same = _alternating_labels(200)
    result = kfold_accuracy(np.full(200, 0.3), is_same)
    assert result["accuracy_mean"] == 50.0
    assert result["accuracy_std"] == 0.0


def test_inverted_scores_give_50_not_0() -> None:
    # Predicting "same" above a threshold can at best say "all same" on inverted scores.
    is_same = _alternating_labels(100)
    result = kfold_accuracy(np.where(is_same, -1.0, 1.0), is_same)
    assert result["accuracy_mean"] == 50.0


def test_kfold_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    is_same = rng.random(300) < 0.5
    sims = rng.normal(size=300) + 1.5 * is_same
    result = kfold_accuracy(sims, is_same, n_folds=10)
    # Direct: brute-force midpoint thresholds on the 9 training folds, contiguous folds of 30.
    accs = []
    for fold in range(10):
        test = np.zeros(300, bool)
        test[fold * 30:(fold + 1) * 30] = True
        train_s, train_y = sims[~test], is_same[~test]
        u = np.unique(train_s)
        candidates = np.concatenate(([u[0] - 1], (u[1:] + u[:-1]) / 2, [u[-1]]))
        train_acc = [np.mean((train_s > t) == train_y) for t in candidates]
        t_best = candidates[int(np.argmax(train_acc))]
        accs.append(100 * np.mean((sims[test] > t_best) == is_same[test]))
    assert result["accuracy_mean"] == pytest.approx(np.mean(accs), abs=1e-12)
    assert result["accuracy_std"] == pytest.approx(np.std(accs), abs=1e-12)


def test_best_threshold_single_error() -> None:
    sims = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    is_same = np.array([False, False, True, False, True, True])
    threshold, accuracy = best_threshold(sims, is_same)
    assert accuracy == pytest.approx(5 / 6)
    assert 0.2 < threshold < 0.3


def test_tar_at_far() -> None:
    impostor = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    genuine = np.array([0.5, 0.9985, 0.9995, 1.5])
    sims = np.concatenate([impostor, genuine])
    is_same = np.concatenate([np.zeros(1000, bool), np.ones(4, bool)])
    # FAR 1e-3 allows one impostor (0.999) above the threshold, which is 0.998.
    assert tar_at_far(sims, is_same, far=1e-3) == pytest.approx(75.0)
    assert tar_at_far(sims, is_same, far=0.0) == pytest.approx(50.0)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="is_same must have the shape"):
        kfold_accuracy(np.zeros(20), np.zeros(19, bool))
    with pytest.raises(ValueError, match="genuine and impostor"):
        tar_at_far(np.zeros(5), np.ones(5, bool))
