"""Pair-verification metrics on similarity scores: pure numpy, no model, no I/O.

Convention: a pair is predicted "same identity" when its similarity is *strictly greater*
than the threshold. Scores are anything where larger means "more alike" (cosine similarity
of L2-normalised embeddings in this project; pass ``-distance`` for distances).

The k-fold protocol follows insightface's ``calculate_roc``: ``sklearn.model_selection.KFold``
without shuffling splits the pairs into contiguous folds (LFW's ten official folds when the
pairs come in LFW order); on each split the threshold with the best accuracy on the nine
training folds is applied to the held-out fold. insightface scans a fixed grid of distance
thresholds; here every distinct cut between the sorted training scores is a candidate
(exact, O(n log n)), and ties in training accuracy go to the lowest threshold.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold


def _check_pairs(similarities: np.ndarray, is_same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert the two pair arrays: ``similarities`` (N,) float, ``is_same`` (N,) bool."""
    sims = np.asarray(similarities, dtype=np.float64)
    same = np.asarray(is_same)
    if sims.ndim != 1:
        raise ValueError(f"similarities must be a 1-D array (N,), found shape {sims.shape}")
    if same.shape != sims.shape:
        raise ValueError(f"is_same must have the shape of similarities {sims.shape}, found {same.shape}")
    if same.dtype != np.bool_:
        if not np.isin(same, (0, 1)).all():
            raise ValueError("is_same must be boolean (or 0/1), found other values")
        same = same.astype(bool)
    if not np.isfinite(sims).all():
        raise ValueError(f"similarities contains {int((~np.isfinite(sims)).sum())} non-finite values")
    return sims, same


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


def kfold_accuracy(similarities: np.ndarray, is_same: np.ndarray, n_folds: int = 10) -> dict:
    """k-fold verification accuracy with thresholds chosen on the other folds.

    Args:
        similarities: (N,) pair scores, larger = more alike.
        is_same: (N,) bool, True for genuine (same-identity) pairs.
        n_folds: number of contiguous folds (``KFold(n_folds, shuffle=False)``).

    Returns:
        ``{"accuracy_mean": float, "accuracy_std": float, "thresholds": list[float],
        "fold_accuracies": list[float]}``; accuracies in percent, ``accuracy_std`` is the
        population standard deviation over folds (``np.std``, as insightface reports it),
        one threshold per fold.
    """
    sims, same = _check_pairs(similarities, is_same)
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, found {n_folds!r}")
    if sims.size < n_folds:
        raise ValueError(f"kfold_accuracy needs at least n_folds={n_folds} pairs, found {sims.size}")
    thresholds, accuracies = [], []
    for train_idx, test_idx in KFold(n_splits=int(n_folds), shuffle=False).split(sims):
        threshold, _ = best_threshold(sims[train_idx], same[train_idx])
        predicted = sims[test_idx] > threshold
        thresholds.append(threshold)
        accuracies.append(100.0 * float(np.mean(predicted == same[test_idx])))
    return {
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "thresholds": thresholds,
        "fold_accuracies": accuracies,
    }


def tar_at_far(similarities: np.ndarray, is_same: np.ndarray, far: float = 1e-3) -> float:
    """True-accept rate (percent) at the threshold whose false-accept rate is at most ``far``.

    The threshold is the lowest one for which the fraction of impostor pairs with
    ``similarity > threshold`` does not exceed ``far`` (computed on all pairs, no folds).

    Args:
        similarities: (N,) pair scores, larger = more alike.
        is_same: (N,) bool, True for genuine pairs; both classes must be present.
        far: target false-accept rate in [0, 1].

    Returns:
        TAR in percent: 100 * fraction of genuine pairs with ``similarity > threshold``.
    """
    sims, same = _check_pairs(similarities, is_same)
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must lie in [0, 1], found {far}")
    genuine, impostor = sims[same], np.sort(sims[~same])[::-1]  # impostors descending
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError(
            f"tar_at_far needs genuine and impostor pairs, found {genuine.size} genuine and {impostor.size} impostor"
        )
    allowed = int(np.floor(far * impostor.size + 1e-9))  # impostors that may score above the threshold
    if allowed >= impostor.size:
        threshold = np.nextafter(impostor[-1], -np.inf)
    else:
        threshold = impostor[allowed]
    return 100.0 * float(np.mean(genuine > threshold))
