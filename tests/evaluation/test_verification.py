"""Pair verification: insightface's own evaluate() reproduced exactly, the midpoint rule, TAR@FAR, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.verification import (
    INSIGHTFACE_THRESHOLDS,
    best_threshold,
    flip_sum_embeddings,
    insightface_threshold,
    kfold_accuracy,
    pair_distances,
    tar_at_far,
)
from tests.conftest import FIXTURES_DIR

FIXTURE = FIXTURES_DIR / "insightface_verification"
PAIRS = np.load(FIXTURE / "pairs.npz")
INSIGHTFACE = json.loads((FIXTURE / "evaluate.json").read_text())
SETS = [name for name in INSIGHTFACE if not name.startswith("_")]


def _pairs(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D) x 2 flip-summed unit embeddings of the two images of each pair, and (N,) is_same."""
    emb = flip_sum_embeddings(PAIRS[f"{name}__embeddings"], PAIRS[f"{name}__flipped"])
    return emb[0::2], emb[1::2], PAIRS[f"{name}__is_same"]


def _unit_pairs(cosines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (N, 2) unit embeddings per pair whose cosine is ``cosines`` (N,) in [-1, 1]."""
    angle = np.arccos(np.clip(cosines, -1.0, 1.0))
    first = np.tile([1.0, 0.0], (len(cosines), 1))
    return first, np.stack([np.cos(angle), np.sin(angle)], axis=1)


def test_the_fixture_covers_all_four_sets() -> None:
    assert SETS == ["chance", "moderate", "ties", "separated_uneven"]


@pytest.mark.parametrize("name", SETS)
def test_reproduces_insightface_evaluate_exactly(name: str) -> None:
    """Fold accuracies, mean and np.std equal insightface's own outputs bit for bit (all are count ratios)."""
    reference = INSIGHTFACE[name]
    result = kfold_accuracy(*_pairs(name), n_folds=10)
    assert result["rule"] == "insightface" and result["threshold_on"] == "squared_l2_distance"
    assert result["fold_accuracies"] == [100.0 * a for a in reference["accuracy"]]
    assert result["accuracy_mean"] == 100.0 * reference["accuracy_mean"]
    assert result["accuracy_std"] == 100.0 * reference["accuracy_std"]
    assert all(t in INSIGHTFACE_THRESHOLDS for t in result["thresholds"])


def test_midpoint_rule_is_another_protocol() -> None:
    """On separable classes every cut between them ties on the training folds: insightface takes the first grid
    value above the training genuines and misses the farthest genuine pair; the midpoint rule does not."""
    assert kfold_accuracy(*_pairs("separated_uneven"))["accuracy_mean"] < 100.0
    midpoint = kfold_accuracy(*_pairs("separated_uneven"), rule="midpoint")
    assert midpoint["accuracy_mean"] == 100.0 and midpoint["threshold_on"] == "cosine_similarity"
    moderate_if = kfold_accuracy(*_pairs("moderate"))
    moderate_mid = kfold_accuracy(*_pairs("moderate"), rule="midpoint")
    assert moderate_mid["rule"] == "midpoint" and moderate_mid["fold_accuracies"] != moderate_if["fold_accuracies"]


def test_flip_sum_is_float64_normalised_sum() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(5, 7)).astype(np.float32)
    out = flip_sum_embeddings(a, b)
    total = a.astype(np.float64) + b.astype(np.float64)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, total / np.linalg.norm(total, axis=1, keepdims=True), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(pair_distances(out[:3], out[2:]), 2 - 2 * np.sum(out[:3] * out[2:], axis=1), atol=1e-12)


def test_insightface_threshold_is_strict_and_first() -> None:
    """Distances 0.3 (genuine) and 0.7 (impostor): every grid value in (0.3, 0.7] is perfect; the first is 0.31,
    because 0.3 itself is a grid value and "same" needs distance < t. A distance of 4 is never "same"."""
    assert INSIGHTFACE_THRESHOLDS[30] == 0.3 and len(INSIGHTFACE_THRESHOLDS) == 400
    threshold, accuracy = insightface_threshold(np.array([0.3, 0.7]), np.array([True, False]))
    assert threshold == INSIGHTFACE_THRESHOLDS[31] and accuracy == 1.0
    threshold, accuracy = insightface_threshold(np.array([4.0, 1.0]), np.array([True, False]))
    assert threshold == 0.0 and accuracy == 0.5  # nothing accepts the genuine pair; t = 0 rejects both


def test_midpoint_kfold_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    is_same = rng.random(300) < 0.5
    sims = np.tanh(rng.normal(size=300) + 1.5 * is_same)
    first, second = _unit_pairs(sims)
    sims = np.einsum("ij,ij->i", first, second)
    result = kfold_accuracy(first, second, is_same, n_folds=10, rule="midpoint")
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
        accs.append(np.mean((sims[test] > t_best) == is_same[test]))
    assert result["accuracy_mean"] == pytest.approx(100 * np.mean(accs), abs=1e-12)
    assert result["accuracy_std"] == pytest.approx(100 * np.std(accs), abs=1e-12)


@pytest.mark.parametrize("rule", ["insightface", "midpoint"])
def test_separable_identical_and_inverted_scores(rule: str) -> None:
    is_same = np.arange(200) % 2 == 0
    spread = 0.05 * (np.arange(200) % 7) / 7  # every fold holds the extremes of both classes
    result = kfold_accuracy(*_unit_pairs(np.where(is_same, 0.8, 0.1) + spread), is_same, rule=rule)
    assert result["accuracy_mean"] == 100.0 and result["accuracy_std"] == 0.0 and len(result["thresholds"]) == 10
    assert kfold_accuracy(*_unit_pairs(np.full(200, 0.3)), is_same, rule=rule)["accuracy_mean"] == 50.0
    # deciding "same" for the more alike pairs can at best say "all same" (or all different) on inverted scores
    assert kfold_accuracy(*_unit_pairs(np.where(is_same, -1.0, 1.0)), is_same, rule=rule)["accuracy_mean"] == 50.0


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
    first, second = _unit_pairs(np.zeros(20))
    with pytest.raises(ValueError, match=r"is_same must have the shape of pairs \(20,\), found \(19,\)"):
        kfold_accuracy(first, second, np.zeros(19, bool))
    with pytest.raises(ValueError, match=r"embeddings2: rows must be L2-normalised, found norms \[2.0, 2.0, 2.0\]"):
        kfold_accuracy(first, 2 * second, np.zeros(20, bool))
    with pytest.raises(ValueError, match="k-fold rule 'lfw' is unknown; expected one of"):
        kfold_accuracy(first, second, np.zeros(20, bool), rule="lfw")
    with pytest.raises(ValueError, match=r"two non-empty \(N, D\) arrays of one shape, found \(20, 2\) and \(19, 2\)"):
        kfold_accuracy(first, second[:19], np.zeros(20, bool))
    with pytest.raises(ValueError, match="genuine and impostor"):
        tar_at_far(np.zeros(5), np.ones(5, bool))
