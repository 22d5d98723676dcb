"""evaluation.metrics: closed-form and hand-made answers, chunking, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import evaluation.metrics as im
from evaluation.identity import consistency, identity_centres, leakage, uniqueness
from evaluation.metrics import (
    check_embeddings,
    equal_error_rate,
    error_curves,
    fnmr_at_fmr,
    genuine_scores,
    impostor_scores,
    verification_metrics,
)
from evaluation.summary import plot_det, plot_score_histograms
from tests.conftest import FIXTURES_DIR

PYEER_DIR = FIXTURES_DIR / "pyeer"
PYEER_SCORES = np.load(PYEER_DIR / "scores.npz")
PYEER_STATS = json.loads((PYEER_DIR / "get_eer_stats.json").read_text())
PYEER_SETS = [name for name in PYEER_STATS if not name.startswith("_")]


def phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("definition", ["pyeer", "bounded"])
def test_two_gaussians_match_closed_form(definition: str) -> None:
    """Genuine N(1, 1), impostor N(-1, 1), 10^6 scores each: EER = Phi(-1); FNMR at FMR p = Phi(z_{1-p} - 2)."""
    rng = np.random.default_rng(0)
    genuine = rng.normal(1.0, 1.0, 1_000_000).astype(np.float32)
    impostor = rng.normal(-1.0, 1.0, 1_000_000).astype(np.float32)
    m = verification_metrics(genuine, impostor, definition=definition)
    assert m["error_rate_definition"] == definition
    assert abs(m["eer"] - phi(-1.0)) < 0.002
    assert abs(m["eer_threshold"]) < 0.02
    z99, z999 = 2.3263478740, 3.0902323062  # standard normal quantiles at 0.99 and 0.999
    assert abs(m["fmr100"] - phi(-1.0 + z99 - 1.0)) < 0.002
    assert abs(m["fmr1000"] - phi(-1.0 + z999 - 1.0)) < 0.002
    assert abs(m["auc"] - phi(2.0 / math.sqrt(2.0))) < 0.002
    assert m["fdr"] == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize("definition", ["pyeer", "bounded"])
def test_hand_made_scores_exact(definition: str) -> None:
    """Sets on which both definitions agree (the operating points fall exactly on the targets)."""
    genuine = np.array([0.9, 0.8, 0.7, 0.3])
    impostor = np.array([0.1, 0.2, 0.4, 0.6])
    m = verification_metrics(genuine, impostor, definition=definition)
    assert m["eer"] == pytest.approx(0.25, abs=1e-12)  # at t = 0.6: one impostor accepted, one genuine rejected
    assert m["eer_threshold"] == pytest.approx(0.6)
    assert m["fmr100"] == pytest.approx(0.25) and m["fmr1000"] == pytest.approx(0.25)  # FMR 0 needs t > 0.6
    assert m["auc"] == pytest.approx(14 / 16)  # 14 of 16 genuine/impostor orderings are right
    assert m["genuine_mean"] == pytest.approx(0.675) and m["impostor_mean"] == pytest.approx(0.325)
    var_g, var_i = np.var(genuine), np.var(impostor)
    assert m["fdr"] == pytest.approx(0.35**2 / (var_g + var_i))
    # FMR and FNMR are both 1/2 at t = 0.5
    assert verification_metrics(np.array([0.9, 0.4]), np.array([0.5, 0.1]), definition=definition)["eer"] == 0.5
    # 200 impostors, 2 at or above t = 0.52 -> FMR exactly 1 %, FNMR 1/4
    impostor = np.r_[np.linspace(0.0, 0.4, 198), 0.55, 0.6]
    genuine = np.array([0.3, 0.52, 0.7, 0.8])
    m = verification_metrics(genuine, impostor, definition=definition)
    assert m["fmr100"] == pytest.approx(0.25) and m["fmr1000"] == pytest.approx(0.5)


def test_definitions_differ_where_no_threshold_hits_the_target() -> None:
    """11 of 1,000 impostors tie at 0.99: FMR jumps from 1.1 % to 0. pyeer takes the nearest FMR (1.1 %, at t = 0.95,
    FNMR 1/4; pyeer 0.5.6 gives 0.25 and FMR1000 0.5); bounded needs FMR <= 1 % (t = 1.2, FNMR 2/4)."""
    impostor = np.r_[np.linspace(0.0, 0.9, 989), np.full(11, 0.99)]
    genuine = np.array([0.5, 0.95, 1.2, 1.3])
    curves = error_curves(genuine, impostor)
    assert fnmr_at_fmr(curves, 0.01, "pyeer") == 0.25
    assert fnmr_at_fmr(curves, 0.01, "bounded") == 0.5
    # EER: at t = 0.3 FMR is 1/4 and FNMR 0, at t = 0.8 FMR 1/4 and FNMR 1/3. pyeer averages the two rates at
    # the point with the smaller sum (t = 0.3: 1/8; pyeer 0.5.6 gives 0.125 at 0.3); bounded follows the curve
    # to where FNMR = FMR (1/4, between the two points)
    curves = error_curves(np.array([0.9, 0.8, 0.3]), np.array([0.85, 0.2, 0.1, 0.05]))
    assert equal_error_rate(curves, "pyeer") == (0.125, pytest.approx(0.3))
    assert equal_error_rate(curves, "bounded") == (0.25, pytest.approx(0.3))


@pytest.mark.parametrize("name", PYEER_SETS)
def test_pyeer_definition_reproduces_pyeer(name: str) -> None:
    """EER, its threshold, FMR100 and FMR1000 equal pyeer's get_eer_stats exactly (count ratios, no float drift)."""
    genuine, impostor = PYEER_SCORES[f"{name}__genuine"], PYEER_SCORES[f"{name}__impostor"]
    reference = PYEER_STATS[name]
    curves = error_curves(genuine, impostor)
    m = verification_metrics(genuine, impostor, curves)
    assert m["error_rate_definition"] == "pyeer"
    assert (m["eer"], m["eer_threshold"]) == (reference["eer"], reference["eer_th"])
    assert (m["fmr100"], m["fmr1000"]) == (reference["fmr100"], reference["fmr1000"])
    assert fnmr_at_fmr(curves, 0.0, "pyeer") == reference["fmr0"]  # pyeer never rejects everything


@pytest.mark.parametrize("name", PYEER_SETS)
def test_bounded_definition_is_the_lowest_fnmr_within_the_target(name: str) -> None:
    """Brute force over every threshold (each distinct score, and rejecting all): min FNMR with FMR <= target."""
    genuine, impostor = PYEER_SCORES[f"{name}__genuine"], PYEER_SCORES[f"{name}__impostor"]
    thresholds = np.r_[np.unique(np.r_[genuine, impostor]), np.inf]
    fmr = (impostor[None, :] >= thresholds[:, None]).mean(axis=1)
    fnmr = (genuine[None, :] < thresholds[:, None]).mean(axis=1)
    m = verification_metrics(genuine, impostor, definition="bounded")
    assert m["fmr100"] == pytest.approx(fnmr[fmr <= 0.01].min(), abs=1e-15)
    assert m["fmr1000"] == pytest.approx(fnmr[fmr <= 0.001].min(), abs=1e-15)
    assert m["fmr100"] >= PYEER_STATS[name]["fmr100"] or name == "continuous"  # pyeer's point may lie above 1 %


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
    with pytest.raises(ValueError, match=r"^error-rate definition 'iso' is unknown; expected one of \['bounded', 'pyeer'\]$"):
        verification_metrics(np.array([0.9]), np.array([0.1]), definition="iso")


def test_plots_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(0.7, 0.1, 2000), rng.normal(0.1, 0.1, 5000)
    m = verification_metrics(genuine, impostor)
    hist = plot_score_histograms(genuine, impostor, m["eer_threshold"], tmp_path / "hist.png", title="t")
    det = plot_det(error_curves(genuine, impostor), tmp_path / "det.png")
    for path in (hist, det):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
