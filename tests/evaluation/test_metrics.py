"""evaluation.metrics: closed-form and hand-made answers, chunking, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import evaluation.metrics as im
from evaluation.identity import consistency, identity_centres, leakage, uniqueness
from evaluation.metrics import (
    check_embeddings,
    error_curves,
    genuine_scores,
    impostor_scores,
    verification_metrics,
)
from evaluation.summary import plot_det, plot_score_histograms


def phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_two_gaussians_match_closed_form() -> None:
    """Genuine N(1, 1), impostor N(-1, 1), 10^6 scores each: EER = Phi(-1); FNMR at FMR p = Phi(z_{1-p} - 2)."""
    rng = np.random.default_rng(0)
    genuine = rng.normal(1.0, 1.0, 1_000_000).astype(np.float32)
    impostor = rng.normal(-1.0, 1.0, 1_000_000).astype(np.float32)
    m = verification_metrics(genuine, impostor)
    assert abs(m["eer"] - phi(-1.0)) < 0.002
    assert abs(m["eer_threshold"]) < 0.02
    z99, z999 = 2.3263478740, 3.0902323062  # standard normal quantiles at 0.99 and 0.999
    assert abs(m["fmr100"] - phi(-1.0 + z99 - 1.0)) < 0.002
    assert abs(m["fmr1000"] - phi(-1.0 + z999 - 1.0)) < 0.002
    assert abs(m["auc"] - phi(2.0 / math.sqrt(2.0))) < 0.002
    assert m["fdr"] == pytest.approx(2.0, rel=0.01)


def test_hand_made_scores_exact() -> None:
    genuine = np.array([0.9, 0.8, 0.7, 0.3])
    impostor = np.array([0.1, 0.2, 0.4, 0.6])
    m = verification_metrics(genuine, impostor)
    assert m["eer"] == pytest.approx(0.25, abs=1e-12)  # at t = 0.6: one impostor accepted, one genuine rejected
    assert m["eer_threshold"] == pytest.approx(0.6)
    assert m["fmr100"] == pytest.approx(0.25) and m["fmr1000"] == pytest.approx(0.25)  # FMR 0 needs t > 0.6
    assert m["auc"] == pytest.approx(14 / 16)  # 14 of 16 genuine/impostor orderings are right
    assert m["genuine_mean"] == pytest.approx(0.675) and m["impostor_mean"] == pytest.approx(0.325)
    var_g, var_i = np.var(genuine), np.var(impostor)
    assert m["fdr"] == pytest.approx(0.35**2 / (var_g + var_i))
    # the crossing between two operating points is interpolated: FMR 0 -> 1/2 while FNMR stays 1/2
    assert verification_metrics(np.array([0.9, 0.4]), np.array([0.5, 0.1]))["eer"] == pytest.approx(0.5)
    # FMR100 picks the lowest FNMR with FMR <= 1%: 200 impostors, 2 above t = 0.5 -> FMR exactly 1%
    impostor = np.r_[np.linspace(0.0, 0.4, 198), 0.55, 0.6]
    genuine = np.array([0.3, 0.52, 0.7, 0.8])
    m = verification_metrics(genuine, impostor)
    assert m["fmr100"] == pytest.approx(0.25) and m["fmr1000"] == pytest.approx(0.5)


def test_perfect_separation_gives_eer_zero() -> None:
    m = verification_metrics(np.array([0.8, 0.9, 0.95]), np.array([0.1, 0.2, 0.79]))
    assert m["eer"] == 0.0 and m["fmr100"] == 0.0 and m["fmr1000"] == 0.0 and m["auc"] == 1.0


def _hand_made_set() -> tuple[np.ndarray, np.ndarray]:
    """3 identities on orthogonal axes (2, 3, 1 samples) in 4-d; identity 1's second sample is tilted 60 degrees."""
    c60, s60 = 0.5, math.sqrt(3) / 2
    emb = np.array(
        [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, c60, s60, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float32
    )
    return emb, np.array([0, 0, 1, 1, 1, 2])


def test_genuine_and_impostor_scores_on_hand_made_set() -> None:
    emb, labels = _hand_made_set()
    np.testing.assert_allclose(np.sort(genuine_scores(emb, labels)), [0.5, 0.5, 1.0, 1.0], atol=1e-6)
    impostor = impostor_scores(emb, labels)
    assert impostor.shape == (15 - 4,)
    np.testing.assert_allclose(impostor, 0.0, atol=1e-6)
    sampled = impostor_scores(emb, labels, n_pairs=1000, seed=3)
    assert sampled.shape == (1000,) and np.abs(sampled).max() < 1e-6
    np.testing.assert_array_equal(sampled, impostor_scores(emb, labels, n_pairs=1000, seed=3))


def test_chunked_scores_equal_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """With tiny blocks the exhaustive impostor scores equal those of one N x N matrix; samples follow it."""
    monkeypatch.setattr(im, "CHUNK", 7)
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(20), 5)
    emb, labels = check_embeddings(rng.normal(size=(100, 16)), labels)
    full = emb @ emb.T
    iu = np.triu_indices(100, k=1)
    same = labels[iu[0]] == labels[iu[1]]
    np.testing.assert_allclose(np.sort(impostor_scores(emb, labels)), np.sort(full[iu][~same]), atol=1e-6)
    np.testing.assert_allclose(np.sort(genuine_scores(emb, labels)), np.sort(full[iu][same]), atol=1e-6)
    sampled = impostor_scores(emb, labels, n_pairs=20_000, seed=0)
    assert abs(sampled.mean() - full[iu][~same].mean()) < 0.01
    with pytest.raises(ValueError, match="exceed max_exhaustive=100; set impostor_pairs"):
        impostor_scores(emb, labels, max_exhaustive=100)


def test_uniqueness_consistency_leakage_hand_made() -> None:
    emb, labels = _hand_made_set()
    centres = identity_centres(emb, labels)
    np.testing.assert_allclose(centres[0], [1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(centres[2], [0, 0, 0, 1], atol=1e-6)
    # identity 1: samples y, (0, .5, .866), y -> centre direction (0, 2.5, .866)
    assert uniqueness(centres, threshold=0.5)["uniqueness"] == 1.0
    merged = np.vstack([centres, [[0.8, 0.6, 0.0, 0.0]]]).astype(np.float32)  # close to identity 0 (cos 0.8)
    u = uniqueness(merged, threshold=0.7)
    assert u["n_unique"] == 2 and u["uniqueness"] == pytest.approx(0.5)  # identities 1 and 2 only
    # sample-to-centre similarity: identity 1's tilted sample has cos = (2.5*.5 + .866*.866) / |c| ~ 0.76
    c = consistency(emb, labels, centres, threshold=0.9)
    assert c["consistency"] == pytest.approx(5 / 6)
    assert consistency(emb, labels, centres, threshold=0.7)["consistency"] == 1.0
    real = np.array([[0.6, 0.8, 0, 0], [0, 0, 0, -1], [0, 0, 1, 0]], dtype=np.float32)
    summary, best, index = leakage(centres, real, threshold=0.55)
    np.testing.assert_allclose(best[[0, 2]], [0.6, 0.0], atol=1e-6)
    assert index[0] == 0 and summary["n_leaked"] == 2  # identity 0 (0.6) and identity 1 (~0.76)
    assert summary["leaked_share"] == pytest.approx(2 / 3)


def test_bad_input_one_clear_line() -> None:
    emb, labels = _hand_made_set()
    with pytest.raises(
        ValueError, match=r"^synthetic.npz: labels do not match the embeddings: 5 labels for 6 embeddings$"
    ):
        check_embeddings(emb, labels[:5], what="synthetic.npz")
    with pytest.raises(
        ValueError, match=r"^s.npz: empty identity: labels cover 0..3 but identities \[2\] have no embeddings$"
    ):
        check_embeddings(emb, np.array([0, 0, 1, 1, 3, 3]), what="s.npz")
    with pytest.raises(
        ValueError,
        match=r"^embeddings of different dimensions: the synthetic set has 4-d embeddings, the real set has 3-d$",
    ):
        leakage(identity_centres(emb, labels), np.eye(3, dtype=np.float32), threshold=0.5)
    with pytest.raises(ValueError, match="expected a non-empty \\(N, D\\) embedding matrix, found shape \\(4,\\)"):
        check_embeddings(np.ones(4))
    with pytest.raises(ValueError, match="rows \\[1\\] are all zero"):
        check_embeddings(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2 identities"):
        impostor_scores(emb[:2], np.array([0, 0]))


def test_plots_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(0.7, 0.1, 2000), rng.normal(0.1, 0.1, 5000)
    m = verification_metrics(genuine, impostor)
    hist = plot_score_histograms(genuine, impostor, m["eer_threshold"], tmp_path / "hist.png", title="t")
    det = plot_det(error_curves(genuine, impostor), tmp_path / "det.png")
    for path in (hist, det):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
