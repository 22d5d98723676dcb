"""Pair verification (LFW-style ``.bin`` sets and ``pairs.txt``): k-fold accuracy and TAR at FAR; pure numpy.

:func:`kfold_accuracy` chooses each fold's threshold on the other folds by one of two rules
(:data:`KFOLD_RULES`): ``insightface`` (the default) is the protocol of insightface's
``recognition/arcface_torch/eval/verification.py`` behind the LFW / AgeDB-30 / CALFW / CFP-FP /
CPLFW numbers of the papers we compare with, reproduced exactly (same folds, grid, tie rule,
flip-sum and normalisation; ``tests/fixtures/insightface_verification/`` holds insightface's own outputs);
``midpoint`` is the exact-midpoint rule on cosine similarities. :func:`tar_at_far` is our TAR at
FAR on all pairs, not insightface's per-fold VAL (see its docstring).
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold

from evaluation.metrics import error_curves, fnmr_at_fmr

#: insightface ``eval/verification.py``: the candidate thresholds on the squared L2 distance of unit embeddings
INSIGHTFACE_THRESHOLDS = np.arange(0.0, 4.0, 0.01)  # (400,)
#: k-fold rule -> how each fold's threshold is chosen on the other folds
KFOLD_RULES: dict[str, str] = {
    "insightface": "insightface eval/verification.py (the papers' LFW/AgeDB-30/CALFW/CFP-FP/CPLFW numbers): "
    "squared L2 distance of the unit (flip-summed) embeddings, 'same' when distance < t, t on the grid "
    "0, 0.01, ..., 3.99, the first t of highest training accuracy; mean and np.std of the fold accuracies",
    "midpoint": "cosine similarity, 'same' when similarity > t, t the exact midpoint between consecutive "
    "distinct training scores with the highest training accuracy (the lowest such cut on ties)",
}


def _check_pairs(scores: np.ndarray, is_same: np.ndarray, what: str = "similarities") -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert the two pair arrays: ``scores`` (N,) float (named ``what``), ``is_same`` (N,) bool."""
    sims = np.asarray(scores, dtype=np.float64)
    same = np.asarray(is_same)
    if sims.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array (N,), found shape {sims.shape}")
    if same.shape != sims.shape:
        raise ValueError(f"is_same must have the shape of {what} {sims.shape}, found {same.shape}")
    if same.dtype != np.bool_:
        if not np.isin(same, (0, 1)).all():
            raise ValueError("is_same must be boolean (or 0/1), found other values")
        same = same.astype(bool)
    if not np.isfinite(sims).all():
        raise ValueError(f"{what} contains {int((~np.isfinite(sims)).sum())} non-finite values")
    return sims, same


def flip_sum_embeddings(embeddings: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """``normalise(f(x) + f(flip(x)))`` in float64, as insightface's verification scores its "Accuracy-Flip".

    Args:
        embeddings: (N, D) features of the images; flipped: (N, D) features of their mirror images.
    Returns:
        (N, D) float64 rows of unit L2 norm.
    """
    a, b = np.asarray(embeddings), np.asarray(flipped)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"embeddings and flipped must be two non-empty (N, D) arrays of one shape, found {a.shape} and {b.shape}"
        )
    summed = a.astype(np.float64) + b.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", summed, summed))
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise ValueError("flip_sum_embeddings: some rows are zero or non-finite after the flip-sum")
    return summed / norms[:, None]


def _check_pair_embeddings(embeddings1: np.ndarray, embeddings2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (N, D) float64 arrays of unit rows (the two images of each pair)."""
    a, b = np.asarray(embeddings1, dtype=np.float64), np.asarray(embeddings2, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"embeddings1 and embeddings2 must be two non-empty (N, D) arrays of one shape, found {a.shape} and {b.shape}"
        )
    for name, x in (("embeddings1", a), ("embeddings2", b)):
        norms = np.linalg.norm(x, axis=1)
        if not np.all(np.abs(norms - 1.0) <= 1e-4):  # also catches NaN
            bad = np.flatnonzero(~(np.abs(norms - 1.0) <= 1e-4))
            found = np.round(norms[bad[:3]], 4).tolist()
            raise ValueError(f"{name}: rows must be L2-normalised, found norms {found} at rows {bad[:3].tolist()}")
    return a, b


def pair_distances(embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each pair in float64 (``2 - 2 cos`` for unit rows). (N, D) x 2 -> (N,)."""
    return np.sum(np.square(np.asarray(embeddings1, np.float64) - np.asarray(embeddings2, np.float64)), axis=1)


def insightface_threshold(distances: np.ndarray, is_same: np.ndarray) -> tuple[float, float]:
    """insightface's threshold: the first grid value (:data:`INSIGHTFACE_THRESHOLDS`) of highest accuracy.

    Args:
        distances: (N,) squared L2 distances of unit embeddings; a pair is "same" when ``distance < t``.
        is_same: (N,) bool ground truth.
    Returns:
        ``(threshold, accuracy)``, accuracy a fraction in [0, 1].
    """
    d, same = _check_pairs(distances, is_same, "distances")
    if d.size == 0:
        raise ValueError("insightface_threshold needs at least one pair, found 0")
    below_same = np.searchsorted(np.sort(d[same]), INSIGHTFACE_THRESHOLDS, side="left")  # genuine with d < t
    below_diff = np.searchsorted(np.sort(d[~same]), INSIGHTFACE_THRESHOLDS, side="left")
    correct = below_same + (np.count_nonzero(~same) - below_diff)  # (400,)
    k = int(np.argmax(correct))  # the first of equal accuracies
    return float(INSIGHTFACE_THRESHOLDS[k]), int(correct[k]) / d.size


def best_threshold(similarities: np.ndarray, is_same: np.ndarray) -> tuple[float, float]:
    """Threshold with the highest accuracy of ``similarity > threshold`` on the given pairs.

    Args:
        similarities: (N,) scores, larger = more alike.
        is_same: (N,) bool ground truth.

    Returns:
        ``(threshold, accuracy)`` with accuracy a fraction in [0, 1]. The candidates are one
        value just below the smallest score (everything "same"), the midpoints between
        consecutive distinct scores, and the largest score (everything "different").
    """
    sims, same = _check_pairs(similarities, is_same)
    if sims.size == 0:
        raise ValueError("best_threshold needs at least one pair, found 0")
    order = np.argsort(sims, kind="stable")
    s, y = sims[order], same[order]
    n = s.size
    # Cut k (0..n): the k lowest scores are predicted "different", the rest "same".
    diff_below = np.concatenate(([0], np.cumsum(~y)))  # (n+1,)
    same_below = np.concatenate(([0], np.cumsum(y)))  # (n+1,)
    correct = diff_below + (same_below[-1] - same_below)  # (n+1,)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] > s[:-1]  # a cut inside a run of equal scores is not realisable
    k = int(np.flatnonzero(valid)[np.argmax(correct[valid])])
    if k == 0:
        threshold = float(np.nextafter(s[0], -np.inf))
    elif k == n:
        threshold = float(s[-1])
    else:
        threshold = float((s[k - 1] + s[k]) / 2.0)
        if not s[k - 1] <= threshold < s[k]:  # midpoint rounded onto s[k] for adjacent floats
            threshold = float(s[k - 1])
    return threshold, float(correct[k]) / n


def kfold_accuracy(
    embeddings1: np.ndarray, embeddings2: np.ndarray, is_same: np.ndarray, n_folds: int = 10, rule: str = "insightface"
) -> dict:
    """k-fold verification accuracy with each fold's threshold chosen on the other folds.

    Args:
        embeddings1, embeddings2: (N, D) unit embeddings of the two images of each pair (flip-summed
            with :func:`flip_sum_embeddings` for insightface's "Accuracy-Flip").
        is_same: (N,) bool, True for genuine (same-identity) pairs.
        n_folds: number of contiguous folds (``KFold(n_folds, shuffle=False)``; the first
            ``N % n_folds`` folds hold one pair more).
        rule: ``insightface`` (default) or ``midpoint``; see :data:`KFOLD_RULES`.

    Returns:
        ``{"rule", "threshold_on", "accuracy_mean", "accuracy_std", "fold_accuracies", "thresholds"}``:
        accuracies in percent (100 x insightface's fractions), ``accuracy_std`` the population standard
        deviation over folds (``np.std``), one threshold per fold (a squared L2 distance for
        ``insightface``, a cosine similarity for ``midpoint``).
    """
    if rule not in KFOLD_RULES:
        raise ValueError(f"k-fold rule {rule!r} is unknown; expected one of {sorted(KFOLD_RULES)}")
    a, b = _check_pair_embeddings(embeddings1, embeddings2)
    scores = pair_distances(a, b) if rule == "insightface" else np.einsum("ij,ij->i", a, b)
    scores, same = _check_pairs(scores, is_same, "pairs")
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, found {n_folds!r}")
    if scores.size < n_folds:
        raise ValueError(f"kfold_accuracy needs at least n_folds={n_folds} pairs, found {scores.size}")
    thresholds, accuracies = [], []
    for train_idx, test_idx in KFold(n_splits=int(n_folds), shuffle=False).split(scores):
        if rule == "insightface":
            threshold, _ = insightface_threshold(scores[train_idx], same[train_idx])
            predicted = scores[test_idx] < threshold
        else:
            threshold, _ = best_threshold(scores[train_idx], same[train_idx])
            predicted = scores[test_idx] > threshold
        thresholds.append(threshold)
        accuracies.append(int(np.count_nonzero(predicted == same[test_idx])) / len(test_idx))
    fractions = np.asarray(accuracies)  # (n_folds,)
    return {
        "rule": rule,
        "threshold_on": "squared_l2_distance" if rule == "insightface" else "cosine_similarity",
        "accuracy_mean": 100.0 * float(np.mean(fractions)),
        "accuracy_std": 100.0 * float(np.std(fractions)),
        "fold_accuracies": [100.0 * f for f in accuracies],
        "thresholds": thresholds,
    }


def tar_at_far(similarities: np.ndarray, is_same: np.ndarray, far: float = 1e-3) -> float:
    """True-accept rate (percent) at false-accept rate ``far`` on all pairs at once (no folds).

    ``100 * (1 - fnmr_at_fmr(error_curves(genuine, impostor), far, "bounded"))``: the best threshold
    whose FAR on these pairs is at most ``far``, accepting ``score >= threshold``. insightface's
    ``VAL@FAR`` differs: per fold it interpolates (SciPy ``interp1d``) the squared-distance threshold
    of FAR = ``far`` on the training folds' FAR curve (grid 0, 0.001, ..., 3.999) and reports the mean
    VAL on the test folds; on SciPy >= 1.9 that interpolation raises, because the FAR curve has
    repeated values. With 3,000 impostor pairs (LFW) FAR 1e-3 is three accepted impostors.

    Args:
        similarities: (N,) pair scores, larger = more alike.
        is_same: (N,) bool, True for genuine pairs; both classes must be present.
        far: target false-accept rate in [0, 1].
    """
    sims, same = _check_pairs(similarities, is_same)
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must lie in [0, 1], found {far}")
    return 100.0 * (1.0 - fnmr_at_fmr(error_curves(sims[same], sims[~same]), far, "bounded"))
