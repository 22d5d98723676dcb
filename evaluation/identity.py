"""Set-level identity metrics of a synthetic dataset (pure numpy): centres, uniqueness, consistency, leakage.

DCFace (Kim et al., CVPR 2023) set metrics: *uniqueness* = share of identity centres whose cosine
similarity to every other centre is below a threshold; *consistency* = share of samples whose
similarity to their own identity centre is at least a threshold. *Leakage*: for each synthetic
identity centre the highest similarity to any real embedding.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse

from evaluation.metrics import _row_chunk, check_same_dim


def identity_centres(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit mean embedding per identity: (K, D) with row k the centre of label k (labels 0..K-1)."""
    n_ids = int(labels.max()) + 1
    membership = scipy.sparse.csr_matrix(
        (np.ones(len(labels), np.float32), (labels, np.arange(len(labels)))), shape=(n_ids, len(labels))
    )
    centres = np.asarray(membership @ embeddings, dtype=np.float32)  # (K, D) sums
    return centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)


def nearest_similarity(
    queries: np.ndarray, refs: np.ndarray, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row the highest similarity to any row of ``refs`` and its index, in chunks.

    Args:
        queries: (Q, D) unit; refs: (R, D) unit; exclude_self: queries are refs (skip the diagonal).
    Returns:
        best (Q,) float32 (-inf when nothing to compare) and index (Q,) int64 (-1 then).
    """
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    index = np.full(len(queries), -1, dtype=np.int64)
    step = _row_chunk(len(refs))
    for a in range(0, len(queries), step):
        sims = queries[a : a + step] @ refs.T  # (q, R)
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, a + rows] = -np.inf
        if sims.shape[1]:
            index[a : a + step] = sims.argmax(axis=1)
            best[a : a + step] = sims[np.arange(sims.shape[0]), index[a : a + step]]
    index[~np.isfinite(best)] = -1
    return best, index


def uniqueness(centres: np.ndarray, threshold: float) -> dict[str, float]:
    """DCFace uniqueness: share of centres (K, D) with similarity < ``threshold`` to every other centre."""
    nearest, _ = nearest_similarity(centres, centres, exclude_self=True)
    unique = nearest < threshold
    return {
        "uniqueness": float(unique.mean()),
        "n_unique": int(unique.sum()),
        "n_identities": int(len(centres)),
        "uniqueness_threshold": float(threshold),
    }


def consistency(embeddings: np.ndarray, labels: np.ndarray, centres: np.ndarray, threshold: float) -> dict[str, float]:
    """DCFace consistency: share of samples (N, D) whose similarity to their own centre (K, D) is >= ``threshold``."""
    sims = np.empty(len(labels), dtype=np.float32)
    step = 1 << 16
    for a in range(0, len(labels), step):
        sims[a : a + step] = np.einsum("ij,ij->i", embeddings[a : a + step], centres[labels[a : a + step]])
    return {
        "consistency": float((sims >= threshold).mean()),
        "consistency_threshold": float(threshold),
        "centre_similarity_mean": float(sims.mean()),
    }


def leakage(centres: np.ndarray, real: np.ndarray, threshold: float) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Nearest real neighbour of each synthetic identity centre.

    Args:
        centres: (K, D) unit synthetic identity centres; real: (M, D) unit real embeddings.
    Returns:
        summary dict, best similarity (K,) and index of the nearest real embedding (K,).
    """
    check_same_dim(centres, real, "the synthetic set", "the real set")
    best, index = nearest_similarity(centres, real)
    summary = {
        "leakage_threshold": float(threshold),
        "n_leaked": int((best > threshold).sum()),
        "leaked_share": float((best > threshold).mean()),
        "real_nn_mean": float(best.mean()),
        "real_nn_max": float(best.max()),
        "n_real": int(len(real)),
    }
    return summary, best, index
