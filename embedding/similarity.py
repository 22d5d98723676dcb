"""Chunked cosine similarity over unit embeddings: nearest neighbours and the greedy separability rule.

Every product is cut into tiles of (``chunk_size`` query rows) x (as many reference rows as fit in
``block_bytes``, 128 MiB by default), so neither side is ever multiplied against the whole other
side: 300,000 x 512 identity centres need the centres themselves (600 MB), a buffer of the kept
rows (at most as large) and one tile.

* :func:`nearest_neighbours`: for each query row the most similar reference row and its cosine.
* :func:`greedy_separable`: visit rows in a given order and keep a row when its cosine to every
  row kept before it is below a threshold; the result is maximal (every dropped row has cosine
  ``>= threshold`` to a row kept before it) and records, for each dropped row, that row and cosine.
* :func:`separability_filter`: the same rule in natural order returning the kept indices (the
  identity-context filter of ``create_sample_identity_contexts.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: Bytes of one (query chunk, reference block) float32 similarity tile.
BLOCK_BYTES = 128 * 2**20


def _block_rows(chunk_size: int, block_bytes: int) -> int:
    """Reference rows per tile so that a (chunk_size, rows) float32 tile fits in ``block_bytes``."""
    return max(1, block_bytes // (4 * max(chunk_size, 1)))


def _as_matrix(x: np.ndarray, what: str) -> torch.Tensor:
    """(N, D) float32 tensor sharing memory with ``x`` when it is already float32 and contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a (N, D) matrix, found shape {x.shape}")
    return torch.from_numpy(x)


def nearest_neighbours(
    queries: np.ndarray,
    refs: np.ndarray,
    exclude_self: bool = False,
    chunk_size: int = 2048,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Highest cosine of each query to any reference and its index, tile by tile.

    Args:
        queries: (Q, D) unit rows; refs: (R, D) unit rows.
        exclude_self: queries are the refs (Q == R): skip each row's own index.
        chunk_size: query rows per tile; block_bytes: bytes of one similarity tile.
    Returns:
        best (Q,) float32 (``-inf`` when there is nothing to compare) and index (Q,) int64 (-1 then).
    """
    q, r = _as_matrix(queries, "queries"), _as_matrix(refs, "refs")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries are {q.shape[1]}-d but refs are {r.shape[1]}-d")
    if exclude_self and len(q) != len(r):
        raise ValueError(f"exclude_self needs queries to be the refs, found {len(q)} queries and {len(r)} refs")
    best = torch.full((len(q),), -math.inf)
    index = torch.full((len(q),), -1, dtype=torch.int64)
    block = _block_rows(chunk_size, block_bytes)
    for a in range(0, len(q), chunk_size):
        chunk = q[a : a + chunk_size]  # (C, D)
        for b in range(0, len(r), block):
            sims = chunk @ r[b : b + block].T  # (C, B)
            if exclude_self and max(a, b) < min(a + sims.shape[0], b + sims.shape[1]):
                rows = torch.arange(max(a, b), min(a + sims.shape[0], b + sims.shape[1]))
                sims[rows - a, rows - b] = -math.inf
            value, arg = sims.max(dim=1)
            better = value > best[a : a + chunk_size]
            best[a : a + chunk_size] = torch.where(better, value, best[a : a + chunk_size])
            index[a : a + chunk_size] = torch.where(better, arg + b, index[a : a + chunk_size])
    index[~torch.isfinite(best)] = -1
    return best.numpy(), index.numpy()


@dataclass
class GreedyResult:
    """Outcome of :func:`greedy_separable`; all arrays index rows of the input, in visiting order.

    kept: (K,) rows kept. dropped: (M,) rows dropped. nearest: (M,) for each dropped row the kept
    row (visited before it) with the highest cosine to it. similarity: (M,) that cosine, ``>= threshold``.
    """

    kept: np.ndarray
    dropped: np.ndarray
    nearest: np.ndarray
    similarity: np.ndarray


def greedy_separable(
    embeddings: np.ndarray,
    threshold: float,
    order: np.ndarray | None = None,
    chunk_size: int = 2048,
    block_bytes: int = BLOCK_BYTES,
) -> GreedyResult:
    """Greedy maximal set of rows whose pairwise cosine is below ``threshold``, visiting rows in ``order``.

    A row is kept when its cosine to every row kept before it is ``< threshold``. Rows are visited in
    chunks: one pass over the kept rows, a tile at a time, keeps the chunk's rows that clear all of
    them; the chunk's survivors are then resolved among themselves in order with one (C, C) product,
    which also gives each row dropped in the chunk its nearest kept row among the chunk's rows.

    Args:
        embeddings: (N, D) unit rows (float32; used as they are, not re-normalised).
        threshold: cosine bound, a finite number.
        order: (N,) permutation of ``range(N)``, the visiting order; None for 0, 1, ..., N-1.
        chunk_size: rows visited per step; block_bytes: bytes of one (chunk, kept rows) tile.
    Returns:
        :class:`GreedyResult` (kept and dropped rows in visiting order).
    """
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite cosine, found {threshold}")
    x = _as_matrix(embeddings, "embeddings")
    n, d = x.shape
    if order is None:
        order = np.arange(n)
    order = np.asarray(order, dtype=np.int64)
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n}), found shape {order.shape}")
    kept_x = x.new_empty((n, d))  # the kept rows, in visiting order, filled as they are chosen
    kept_rows = np.empty(n, dtype=np.int64)  # kept_rows[p]: the input row at position p of kept_x
    n_kept = 0
    dropped: list[np.ndarray] = []
    nearest: list[np.ndarray] = []  # positions in kept_x
    similarity: list[np.ndarray] = []
    block = _block_rows(chunk_size, block_bytes)
    for start in range(0, n, chunk_size):
        rows = order[start : start + chunk_size]
        chunk = x[torch.from_numpy(rows)]  # (C, D)
        best = torch.full((len(rows),), -math.inf)
        arg = torch.full((len(rows),), -1, dtype=torch.int64)
        for b in range(0, n_kept, block):
            value, where = (chunk @ kept_x[b : min(b + block, n_kept)].T).max(dim=1)  # (C, B) -> (C,)
            better = value > best
            best, arg = torch.where(better, value, best), torch.where(better, where + b, arg)
        inner = (chunk @ chunk.T).numpy()  # (C, C)
        gone = (best >= threshold).numpy()
        alive = np.flatnonzero(~gone)
        conflict = np.tril(inner[np.ix_(alive, alive)] >= threshold, k=-1)  # conflict[j, i]: i visited before j
        keep = np.ones(len(alive), dtype=bool)
        for j in np.flatnonzero(conflict.any(axis=1)):
            keep[j] = not (conflict[j] & keep).any()
        new = alive[keep]
        # each dropped row's nearest kept row visited before it: an earlier chunk's (best, arg) or this chunk's
        lost = np.setdiff1d(np.arange(len(rows)), new)
        before = np.where(new[None, :] < lost[:, None], inner[np.ix_(lost, new)], -np.inf)  # (m, k)
        inside = before.argmax(axis=1) if len(new) else np.zeros(len(lost), np.int64)
        inside_sim = before[np.arange(len(lost)), inside] if len(new) else np.full(len(lost), -np.inf)
        prior_sim, prior_arg = best.numpy()[lost], arg.numpy()[lost]
        from_inside = inside_sim > prior_sim
        dropped.append(rows[lost])
        nearest.append(np.where(from_inside, n_kept + inside, prior_arg))
        similarity.append(np.where(from_inside, inside_sim, prior_sim))
        kept_x[n_kept : n_kept + len(new)] = chunk[torch.from_numpy(new)]
        kept_rows[n_kept : n_kept + len(new)] = rows[new]
        n_kept += len(new)
    if not dropped:
        return GreedyResult(kept_rows[:0], kept_rows[:0], kept_rows[:0], np.zeros(0, np.float32))
    visit = np.empty(n, dtype=np.int64)
    visit[order] = np.arange(n)
    dropped_rows = np.concatenate(dropped)
    by_visit = np.argsort(visit[dropped_rows], kind="stable")
    return GreedyResult(
        kept=kept_rows[:n_kept].copy(),
        dropped=dropped_rows[by_visit],
        nearest=kept_rows[np.concatenate(nearest)[by_visit]],
        similarity=np.concatenate(similarity)[by_visit].astype(np.float32),
    )


def separability_filter(embeddings: np.ndarray, threshold: float, chunk_size: int = 2048) -> np.ndarray:
    """Greedy maximal set of rows, visited in order, whose pairwise cosine similarity is below ``threshold``.

    The rows are L2-normalised first. Every kept pair has cosine ``< threshold``; every dropped row
    has cosine ``>= threshold`` to some kept row before it (see :func:`greedy_separable`).

    Args:
        embeddings: (N, D) rows (any non-zero norm).
        threshold: cosine similarity bound in [-1, 1].
        chunk_size: rows per step.
    Returns:
        (K,) int64 indices of the kept rows, increasing.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} embeddings are all zeros and cannot be normalised")
    return greedy_separable(x / norms, threshold, chunk_size=chunk_size).kept
