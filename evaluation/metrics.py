"""Verification and identity-separability metrics: pure numpy / scikit-learn, no model, no I/O.

One module serves both the synthetic-set evaluation (``evaluate.py``) and FR verification
(``face_recognition_training``), so both use the same error-rate definitions.

Scores are cosine similarities of unit embeddings (larger = more alike). Genuine pairs: all pairs
inside an identity. Impostor pairs: all pairs across identities, or a seeded random sample. Every
similarity matrix is built in row chunks, so 10,000 identities x 50 images (500,000 x 512) never
form a 500,000 x 500,000 matrix.

Error rates follow ISO/IEC 19795-1 naming: FMR (false match rate, impostors accepted) and FNMR
(false non-match rate, genuines rejected) at a threshold ``score >= t``, one operating point per
distinct score; AUC of the ROC; Fisher discriminant ratio
``FDR = (mu_g - mu_i)^2 / (sigma_g^2 + sigma_i^2)``. EER and FMR100 / FMR1000 (FNMR at FMR 1% /
0.1%) have two definitions (:data:`ERROR_RATE_DEFINITIONS`): ``pyeer`` (the default: IDiff-Face's
numbers were computed with pyeer) and ``bounded``.

Pair verification (LFW-style k-fold accuracy, TAR at FAR) is in :mod:`evaluation.verification`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import auc

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


#: definition name -> what EER and FMR100 / FMR1000 mean under it
ERROR_RATE_DEFINITIONS: dict[str, str] = {
    "pyeer": "pyeer 0.5.6 get_eer_stats, as IDiff-Face reported: thresholds at the distinct scores only; "
    "FNMR at FMR x = FNMR of the threshold whose FMR is nearest x (the lowest such threshold on ties, so "
    "its FMR may exceed x); EER = (FMR + FNMR) / 2 at the better of the two thresholds around the crossing",
    "bounded": "FNMR at FMR x = the lowest FNMR among thresholds (incl. rejecting all) whose FMR is at most x; "
    "EER = FMR = FNMR interpolated linearly between the two thresholds around the crossing",
}


@dataclass
class ErrorCurves:
    """Operating points, FMR ascending: ``fmr``, ``fnmr``, ``thresholds`` (P,) for decisions ``score >= t``.

    Point 0 rejects everything (threshold ``inf``: FMR 0, FNMR 1); point k >= 1 accepts the scores
    >= the k-th largest distinct score. Rates are exact count ratios (``count / total``).
    """

    fmr: np.ndarray
    fnmr: np.ndarray
    thresholds: np.ndarray


def error_curves(genuine: np.ndarray, impostor: np.ndarray) -> ErrorCurves:
    """FMR/FNMR at every distinct score used as threshold. genuine: (G,), impostor: (I,)."""
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError(f"need genuine and impostor scores, found {len(genuine)} genuine and {len(impostor)} impostor")
    scores = np.concatenate([genuine, impostor])
    is_genuine = np.r_[np.ones(len(genuine), dtype=bool), np.zeros(len(impostor), dtype=bool)]
    order = np.argsort(-scores, kind="stable")  # descending
    s = scores[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # last position of each run of equal scores
    accepted_genuine = np.cumsum(is_genuine[order])[last]
    accepted_impostor = np.cumsum(~is_genuine[order])[last]
    n_g, n_i = len(genuine), len(impostor)
    return ErrorCurves(
        fmr=np.r_[0, accepted_impostor] / n_i,
        fnmr=np.r_[n_g, n_g - accepted_genuine] / n_g,
        thresholds=np.r_[np.inf, s[last].astype(np.float64)],
    )


def _check_definition(definition: str) -> None:
    if definition not in ERROR_RATE_DEFINITIONS:
        raise ValueError(
            f"error-rate definition {definition!r} is unknown; expected one of {sorted(ERROR_RATE_DEFINITIONS)}"
        )


def fnmr_at_fmr(curves: ErrorCurves, fmr: float, definition: str = "pyeer") -> float:
    """FNMR at a target FMR (see :data:`ERROR_RATE_DEFINITIONS`).

    ``bounded``: the lowest FNMR among thresholds whose FMR is at most ``fmr``. ``pyeer``: the FNMR of
    the distinct-score threshold whose FMR is nearest ``fmr`` (first in ascending-threshold order).
    """
    _check_definition(definition)
    if definition == "bounded":
        return float(curves.fnmr[curves.fmr <= fmr + 1e-12].min())
    fmr_up = curves.fmr[:0:-1]  # the distinct-score thresholds, ascending (pyeer's order)
    return float(curves.fnmr[:0:-1][np.argmin(np.abs(fmr_up - fmr))])


def equal_error_rate(curves: ErrorCurves, definition: str = "pyeer") -> tuple[float, float]:
    """``(EER, its threshold)`` (see :data:`ERROR_RATE_DEFINITIONS`).

    ``bounded``: FMR and FNMR interpolated linearly to their crossing; the threshold is the first one
    with FNMR <= FMR. ``pyeer``: in ascending-threshold order, t2 is the first threshold with
    FMR <= FNMR and t1 the one before (t2 itself when FMR = FNMR there or t2 is the lowest); the one of
    the two with the smaller FMR + FNMR (t1 on ties) gives ``(FMR + FNMR) / 2``; (1.0, lowest
    threshold) when the curves never cross (pyeer's value for inverted scores).
    """
    _check_definition(definition)
    if definition == "bounded":
        d = curves.fnmr - curves.fmr  # non-increasing along the curve; 1 at the start, -1 at the end
        k = int(np.argmax(d <= 0))
        t = d[k - 1] / (d[k - 1] - d[k])
        return float(curves.fmr[k - 1] + t * (curves.fmr[k] - curves.fmr[k - 1])), float(curves.thresholds[k])
    fmr, fnmr, thresholds = curves.fmr[:0:-1], curves.fnmr[:0:-1], curves.thresholds[:0:-1]
    crossed = np.flatnonzero(fmr - fnmr <= 0)
    if len(crossed) == 0:
        return 1.0, float(thresholds[0])
    t2 = int(crossed[0])
    t1 = t2 - 1 if fmr[t2] != fnmr[t2] and t2 != 0 else t2
    k = t1 if fmr[t1] + fnmr[t1] <= fmr[t2] + fnmr[t2] else t2
    return float((fnmr[k] + fmr[k]) / 2), float(thresholds[k])


def verification_metrics(
    genuine: np.ndarray, impostor: np.ndarray, curves: ErrorCurves | None = None, definition: str = "pyeer"
) -> dict[str, float | int | str]:
    """EER (+ threshold), FMR100, FMR1000 under ``definition``, AUC, means/stds and FDR; rates are fractions in [0, 1]."""
    _check_definition(definition)
    curves = error_curves(genuine, impostor) if curves is None else curves
    eer, eer_threshold = equal_error_rate(curves, definition)
    mu_g, mu_i = float(np.mean(genuine, dtype=np.float64)), float(np.mean(impostor, dtype=np.float64))
    sd_g, sd_i = float(np.std(genuine, dtype=np.float64)), float(np.std(impostor, dtype=np.float64))
    return {
        "error_rate_definition": definition,
        "eer": eer,
        "eer_threshold": eer_threshold,
        "fmr100": fnmr_at_fmr(curves, 1e-2, definition),
        "fmr1000": fnmr_at_fmr(curves, 1e-3, definition),
        "auc": float(auc(curves.fmr, 1.0 - curves.fnmr)),
        "genuine_mean": mu_g,
        "genuine_std": sd_g,
        "impostor_mean": mu_i,
        "impostor_std": sd_i,
        "fdr": (mu_g - mu_i) ** 2 / (sd_g**2 + sd_i**2) if sd_g + sd_i > 0 else float("inf"),
        "n_genuine": int(len(genuine)),
        "n_impostor": int(len(impostor)),
    }
