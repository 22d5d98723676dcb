"""Verification and identity-separability metrics: pure numpy / scikit-learn, no model, no I/O.

One module serves both the synthetic-set evaluation (``evaluate.py``) and FR verification
(``face_recognition_training``), so both use the same error-rate definitions.

Scores are cosine similarities of unit embeddings (larger = more alike). Genuine pairs: all pairs
inside an identity. Impostor pairs: all pairs across identities, or a seeded random sample. Every
similarity matrix is built in row chunks, so 10,000 identities x 50 images (500,000 x 512) never
form a 500,000 x 500,000 matrix.

Error rates follow ISO/IEC 19795-1 naming: FMR (false match rate, impostors accepted) and FNMR
(false non-match rate, genuines rejected) at a threshold ``score >= t``; EER where the two are equal
(linear interpolation between the two operating points around the crossing; its threshold is the
first one with FNMR <= FMR); FMR100 / FMR1000 = the lowest FNMR at FMR <= 1% / 0.1%; AUC of the ROC;
Fisher discriminant ratio ``FDR = (mu_g - mu_i)^2 / (sigma_g^2 + sigma_i^2)``. TAR at FAR is
``1 - FNMR`` at that FMR.

Pair verification (LFW-style ``.bin`` sets): k-fold accuracy with the threshold chosen on the other
folds (:func:`kfold_accuracy`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import auc, roc_curve
from sklearn.model_selection import KFold

CHUNK = 4096  # most rows of one similarity block; _row_chunk also caps a block at 256 MB
SAMPLE_ROWS = 64  # impostor sampling: scores come in SAMPLE_ROWS x SAMPLE_ROWS blocks ...
SAMPLE_BLOCKS = 64  # ... SAMPLE_BLOCKS of them per matrix product


def check_embeddings(
    embeddings: np.ndarray, labels: np.ndarray | None = None, what: str = "embeddings"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate and L2-normalise an embedding set.

    Args:
        embeddings: (N, D) float array, N >= 1.
        labels: optional (N,) integer identity labels, expected to cover 0..K-1 (as ``encode.py``
            writes them); a label missing from that range is an empty identity.
        what: the name of the set in error messages (e.g. the file path).
    Returns:
        (N, D) float32 unit rows and (N,) int64 labels (or None).
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"{what}: expected a non-empty (N, D) embedding matrix, found shape {embeddings.shape}")
    embeddings = embeddings.astype(np.float32, copy=False)
    if not np.isfinite(embeddings).all():
        raise ValueError(f"{what}: embeddings contain NaN or inf")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what}: embedding rows {np.flatnonzero(norms[:, 0] == 0)[:5].tolist()} are all zero")
    embeddings = embeddings / norms
    if labels is None:
        return embeddings, None
    labels = np.asarray(labels)
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"{what}: labels do not match the embeddings: {labels.size} labels for {embeddings.shape[0]} embeddings"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers, found dtype {labels.dtype}")
    present = np.unique(labels)
    if present[0] < 0:
        raise ValueError(f"{what}: labels must be identity indices >= 0, found {present[0]}")
    if len(present) != present[-1] + 1:
        missing = np.setdiff1d(np.arange(present[-1] + 1), present)
        raise ValueError(
            f"{what}: empty identity: labels cover 0..{present[-1]} but identities {missing[:5].tolist()} have no embeddings"
        )
    return embeddings, labels.astype(np.int64, copy=False)


def check_same_dim(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    """Raise when two embedding matrices have different embedding sizes."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"embeddings of different dimensions: {what_a} has {a.shape[1]}-d embeddings, {what_b} has {b.shape[1]}-d"
        )


def _row_chunk(n_cols: int, budget_bytes: int = 256 * 2**20) -> int:
    """Rows per (rows, n_cols) float32 similarity block within ``budget_bytes``."""
    return max(1, min(CHUNK, budget_bytes // (4 * max(n_cols, 1))))


def genuine_scores(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """All within-identity pair similarities (i < j). embeddings: (N, D) unit; labels: (N,). Returns (G,) float32."""
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0])
    counts = np.diff(np.r_[starts, len(order)])
    out = np.empty(int((counts * (counts - 1) // 2).sum()), dtype=np.float32)
    pos = 0
    for start, count in zip(starts, counts):
        if count < 2:
            continue
        block = embeddings[order[start : start + count]]  # (c, D)
        iu = np.triu_indices(count, k=1)
        sims = (block @ block.T)[iu]
        out[pos : pos + len(sims)] = sims
        pos += len(sims)
    return out


def impostor_scores(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_pairs: int | None = None,
    seed: int = 0,
    max_exhaustive: int = 50_000_000,
) -> np.ndarray:
    """Cross-identity pair similarities.

    Args:
        embeddings: (N, D) unit rows; labels: (N,) with at least 2 identities.
        n_pairs: None = every pair i < j of different identities (chunked; refused above
            ``max_exhaustive`` pairs), else this many pairs drawn with ``seed``: all cross-identity
            pairs between two random sets of ``SAMPLE_ROWS`` rows, repeated. Each pair is uniform
            over the impostor pairs, and only two small row sets are gathered per block instead of
            two rows per pair (random row gathers dominate at 10^7 pairs).
    Returns:
        (I,) float32.
    """
    n = len(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"impostor scores need at least 2 identities, found {len(np.unique(labels))}")
    if n_pairs is None:
        counts = np.bincount(labels)
        total = n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())
        if total > max_exhaustive:
            raise ValueError(
                f"{total:,} impostor pairs exceed max_exhaustive={max_exhaustive:,}; set impostor_pairs to a sample size"
            )
        parts = []
        step = _row_chunk(n)
        for a in range(0, n, step):
            b = min(a + step, n)
            sims = embeddings[a:b] @ embeddings[a:].T  # (b - a, n - a)
            upper = np.arange(a, b)[:, None] < np.arange(a, n)[None, :]
            parts.append(sims[upper & (labels[a:b, None] != labels[None, a:])])
        return np.concatenate(parts).astype(np.float32, copy=False)
    if n_pairs < 1:
        raise ValueError(f"impostor_pairs must be >= 1 or null (all pairs), found {n_pairs}")
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    total = 0
    while total < n_pairs:
        a = rng.integers(0, n, (SAMPLE_BLOCKS, SAMPLE_ROWS))  # (K, r) row indices
        b = rng.integers(0, n, (SAMPLE_BLOCKS, SAMPLE_ROWS))
        sims = np.matmul(embeddings[a], embeddings[b].transpose(0, 2, 1))  # (K, r, r)
        scores = sims[labels[a][:, :, None] != labels[b][:, None, :]]
        parts.append(scores)
        total += len(scores)
    return np.concatenate(parts)[:n_pairs].astype(np.float32, copy=False)


@dataclass
class ErrorCurves:
    """Operating points, FMR ascending: ``fmr``, ``fnmr``, ``thresholds`` (P,) for decisions ``score >= t``."""

    fmr: np.ndarray
    fnmr: np.ndarray
    thresholds: np.ndarray


def error_curves(genuine: np.ndarray, impostor: np.ndarray) -> ErrorCurves:
    """FMR/FNMR at every distinct score used as threshold. genuine: (G,), impostor: (I,)."""
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError(f"need genuine and impostor scores, found {len(genuine)} genuine and {len(impostor)} impostor")
    is_genuine = np.r_[np.ones(len(genuine), dtype=bool), np.zeros(len(impostor), dtype=bool)]
    fmr, tmr, thresholds = roc_curve(is_genuine, np.r_[genuine, impostor], drop_intermediate=False)
    return ErrorCurves(fmr=fmr, fnmr=1.0 - tmr, thresholds=thresholds)


def fnmr_at_fmr(curves: ErrorCurves, fmr: float) -> float:
    """Lowest FNMR among thresholds whose FMR is at most ``fmr``."""
    return float(curves.fnmr[curves.fmr <= fmr + 1e-12].min())


def verification_metrics(
    genuine: np.ndarray, impostor: np.ndarray, curves: ErrorCurves | None = None
) -> dict[str, float]:
    """EER (+ threshold), FMR100, FMR1000, AUC, means/stds and FDR; rates are fractions in [0, 1]."""
    curves = error_curves(genuine, impostor) if curves is None else curves
    d = curves.fnmr - curves.fmr  # non-increasing along the curve; 1 at the start, -1 at the end
    k = int(np.argmax(d <= 0))
    t = d[k - 1] / (d[k - 1] - d[k])
    eer = curves.fmr[k - 1] + t * (curves.fmr[k] - curves.fmr[k - 1])
    mu_g, mu_i = float(np.mean(genuine, dtype=np.float64)), float(np.mean(impostor, dtype=np.float64))
    sd_g, sd_i = float(np.std(genuine, dtype=np.float64)), float(np.std(impostor, dtype=np.float64))
    return {
        "eer": float(eer),
        "eer_threshold": float(curves.thresholds[k]),
        "fmr100": fnmr_at_fmr(curves, 1e-2),
        "fmr1000": fnmr_at_fmr(curves, 1e-3),
        "auc": float(auc(curves.fmr, 1.0 - curves.fnmr)),
        "genuine_mean": mu_g,
        "genuine_std": sd_g,
        "impostor_mean": mu_i,
        "impostor_std": sd_i,
        "fdr": (mu_g - mu_i) ** 2 / (sd_g**2 + sd_i**2) if sd_g + sd_i > 0 else float("inf"),
        "n_genuine": int(len(genuine)),
        "n_impostor": int(len(impostor)),
    }


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
    """True-accept rate (percent) at false-accept rate ``far`` on all pairs (no folds).

    ``100 * (1 - fnmr_at_fmr(error_curves(genuine, impostor), far))``: the same operating point and
    tie rule (accept when ``score >= threshold``) as the synthetic-set report's FMR100/FMR1000.

    Args:
        similarities: (N,) pair scores, larger = more alike.
        is_same: (N,) bool, True for genuine pairs; both classes must be present.
        far: target false-accept rate in [0, 1].
    """
    sims, same = _check_pairs(similarities, is_same)
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must lie in [0, 1], found {far}")
    return 100.0 * (1.0 - fnmr_at_fmr(error_curves(sims[same], sims[~same]), far))
