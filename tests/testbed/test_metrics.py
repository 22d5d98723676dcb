"""testbed.metrics: identity match, novelty, leakage, copies and diversity on hand-made embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import genuine_scores, impostor_scores, verification_metrics
from testbed.metrics import (
    crossing_eer,
    identity_bootstrap,
    identity_match,
    identity_quality,
    mean_pairwise_distance,
    novelty,
    source_match,
)


def unit(*rows: list[float]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def c(degrees: float) -> float:
    """Cosine of an angle in degrees."""
    return float(np.cos(np.deg2rad(degrees)))


def angles(*degrees: float) -> np.ndarray:
    """Unit vectors in the plane at the given angles: cos between two is cos of their difference."""
    r = np.deg2rad(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_identity_match_by_hand() -> None:
    # identity 0 at 0, 10 and 100 degrees (centre at 32.6 degrees), identity 1 at 60 and 70 (centre at 65).
    # 0: own without it (10, 100) at 55 -> cos 55 = 0.57 > cos 65 = 0.42       match
    # 10: own (0, 100) at 50 -> cos 40 = 0.77 > cos 55 = 0.57                 match
    # 100: own (0, 10) at 5 -> cos 95 < 0 < cos 35 = 0.82                     no match
    # 60: own (70) -> cos 10 = 0.98 > identity 0's centre cos 27.4 = 0.89     match
    # 70: own (60) -> cos 10 > cos 37.4                                       match
    share, n = identity_match(angles(0, 10, 100, 60, 70), np.array([0, 0, 0, 1, 1]))
    assert n == 5 and share == pytest.approx(0.8)


def test_identity_match_leaves_the_image_out_of_its_own_centre() -> None:
    # identity 0 at 0 and 80 degrees (centre 40), identity 1 at 30 and 36 (centre 33).
    # 0: own without it (80) cos 80 = 0.17 < cos 33 = 0.84                   no match
    # 80: own (0) cos 80 = 0.17 < cos 47 = 0.68                              no match (with itself: cos 40 = 0.77, a match)
    # 30: own (36) cos 6 = 0.9945 > identity 0's centre cos 10 = 0.985      match
    # 36: own (30) cos 6 = 0.9945 < cos 4 = 0.9976                           no match (with itself: cos 3 = 0.9986, a match)
    share, n = identity_match(angles(0, 80, 30, 36), np.array([0, 0, 1, 1]))
    assert n == 4 and share == pytest.approx(0.25)


def test_identity_match_ignores_identities_with_one_image() -> None:
    e = angles(0, 5, 90, 180)
    labels = np.array([0, 0, 1, 2])
    share, n = identity_match(e, labels)
    assert n == 2 and share == 1.0
    assert np.isnan(identity_match(angles(0, 90), np.array([0, 1]))[0])


def test_mean_pairwise_distance_closed_forms() -> None:
    eye = np.eye(3)
    # three orthonormal vectors: every pair at L2 distance sqrt(2); a pair at 60 degrees: distance 1
    x = np.concatenate([eye, angles(0, 60) @ np.eye(2, 3)])
    labels = np.array([0, 0, 0, 1, 1])
    assert mean_pairwise_distance(x, labels) == pytest.approx((np.sqrt(2) + 1) / 2)
    # RMS over F=4 features: images 0 and 1 differ by 0.5 in every feature
    pixels = np.array([[0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]])
    assert mean_pairwise_distance(pixels, np.array([0, 0, 1]), rms=True) == pytest.approx(0.5)
    assert np.isnan(mean_pairwise_distance(pixels, np.array([0, 1, 2])))


def test_novelty_scores_the_nearest_training_face_by_mean_image_score() -> None:
    e = angles(0, 20, 90, 94)  # identity 0: 0 and 20 degrees; identity 1: 90 and 94 degrees
    labels = np.array([0, 0, 1, 1])
    train = angles(10, 45, 92)
    out = novelty(e, labels, train)
    # identity 0: mean score to the face at 10 deg = cos 10; identity 1: to the face at 92 = cos 2
    np.testing.assert_allclose(out["max_cos"], [c(10), c(2)], rtol=1e-6)
    assert out["nearest"].tolist() == [0, 2]
    np.testing.assert_allclose(out["genuine_mean"], [c(20), c(4)], rtol=1e-6)
    # copies: identity 0's training face (cos 10 = 0.985) scores above its genuine score (cos 20 = 0.940);
    # identity 1's (cos 2 = 0.9994) above cos 4 = 0.9976 too
    assert (out["max_cos"] > out["genuine_mean"]).all()
    far = novelty(e, labels, angles(200))
    assert (far["max_cos"] < far["genuine_mean"]).all()


def test_source_match_by_cosine_and_by_l2() -> None:
    sources = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    features = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [-2.0, 0.1]])
    labels = np.array([0, 1, 1, 2])
    assert source_match(features, labels, sources, "cosine") == 0.75
    assert source_match(features, labels, sources, "l2") == 0.75
    assert source_match(np.array([[0.0, 3.0]]), np.array([1]), sources, "l2") == 1.0
    with pytest.raises(ValueError, match="metric must be 'cosine' or 'l2', found 'dot'"):
        source_match(features, labels, sources, "dot")


def test_identity_quality_agrees_with_its_parts_and_the_leakage_rule() -> None:
    rng = np.random.default_rng(0)
    centres = unit(*rng.normal(size=(6, 8)))
    labels = np.repeat(np.arange(6), 5)
    e = unit(*(centres[labels] + 0.2 * rng.normal(size=(30, 8))))
    train = np.concatenate([centres[:2], unit(*rng.normal(size=(10, 8)))])  # identities 0 and 1 copy a training face
    out = identity_quality(e, labels, 6, train)
    v = verification_metrics(genuine_scores(e.astype(np.float32), labels), impostor_scores(e.astype(np.float32), labels))
    for key in ("eer", "fmr100", "fdr", "genuine_mean", "impostor_mean", "eer_threshold"):
        assert out[key] == pytest.approx(v[key], rel=1e-5), key
    nov = novelty(e, labels, train)
    assert out["novelty_max_cos_mean"] == pytest.approx(nov["max_cos"].mean(), rel=1e-5)
    assert out["leakage_share"] == pytest.approx(np.mean(nov["max_cos"] > v["eer_threshold"]))
    assert out["copy_share"] == pytest.approx(np.mean(nov["max_cos"] > nov["genuine_mean"]))
    assert nov["nearest"][:2].tolist() == [0, 1] and out["copy_share"] >= 2 / 6
    assert out["identity_match"] == pytest.approx(identity_match(e, labels)[0])
    assert out["diversity"] == pytest.approx(mean_pairwise_distance(e, labels))
    assert "novelty_max_cos_mean" not in identity_quality(e, labels, 6)


def test_identity_quality_rejects_bad_inputs() -> None:
    e = angles(0, 10, 90, 100)
    with pytest.raises(ValueError, match=r"labels must lie in 0..0 \(n_identities=1\), found 0..1"):
        identity_quality(e, np.array([0, 0, 1, 1]), 1)
    with pytest.raises(ValueError, match="no identity kept two detected images"):
        identity_quality(e[:2], np.array([0, 1]), 2)


def test_identities_without_detected_images_drop_out() -> None:
    e = angles(0, 10, 90, 100)
    gap = identity_quality(e, np.array([0, 0, 2, 2]), 3)  # identity 1 lost all its images
    assert gap == identity_quality(e, np.array([0, 0, 1, 1]), 2)
    assert gap["n_identities_scored"] == 2 and gap["identity_match"] == 1.0 and gap["eer"] == 0.0


def test_crossing_eer_closed_forms_and_integer_weights_are_repeated_pairs() -> None:
    # separated: no error; genuine 0.2, 0.6 against impostors 0.4, 0.8: one of two wrong on each side -> 0.5
    assert crossing_eer(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True])) == 0.0
    assert crossing_eer(np.array([0.2, 0.4, 0.6, 0.8]), np.array([True, False, True, False])) == 0.5
    rng = np.random.default_rng(3)
    scores = np.sort(rng.normal(size=40))
    genuine = rng.random(40) < 0.4
    weights = rng.integers(0, 4, 40)
    repeated = crossing_eer(np.repeat(scores, weights), np.repeat(genuine, weights))
    assert crossing_eer(scores, genuine, weights.astype(float)) == pytest.approx(repeated, abs=1e-12)


def test_identity_bootstrap_intervals() -> None:
    # well separated identities: every resample has EER 0 and identity match 1
    labels = np.repeat(np.arange(6), 4)
    e = np.eye(8)[labels] + 0.01 * np.random.default_rng(0).normal(size=(24, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert identity_bootstrap(e, labels, n_boot=50) == {"eer_ci": [0.0, 0.0], "identity_match_ci": [1.0, 1.0]}
    # noisy identities: the interval holds the point estimates and narrows with more identities
    widths = []
    for m in (10, 60):
        labels = np.repeat(np.arange(m), 5)
        centres = np.random.default_rng(1).normal(size=(m, 16))
        e = centres[labels] + 1.2 * np.random.default_rng(2).normal(size=(5 * m, 16))
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        q = identity_quality(e, labels, m)
        low, high = q["eer_ci"]
        assert low < high and low <= q["eer"] + 0.02 and q["eer"] - 0.02 <= high
        assert q["identity_match_ci"][0] <= q["identity_match"] <= q["identity_match_ci"][1]
        widths.append(high - low)
    assert widths[1] < widths[0]
    with pytest.raises(ValueError, match="at least 2 identities"):
        identity_bootstrap(e[:5], np.zeros(5, dtype=int))
