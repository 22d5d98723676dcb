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

``screen="bfloat16"`` (greedy rule only) multiplies the tiles in bfloat16, which CPUs with AMX or
AVX512-BF16 and GPUs run several times faster, and re-checks in float32 every pair whose bfloat16
cosine is within :data:`BF16_MARGIN` of the threshold, so the decisions and reported cosines are the
float32 ones. The margin bounds the bfloat16 error for unit rows: rounding both inputs (unit
roundoff u = 2^-8) moves a cosine by at most 2u + u^2, rounding the output and the threshold by at
most 2u more, float32 accumulation by D 2^-24: 0.0157 + 3e-5 for D = 512, half the margin.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

#: Bytes of one (query chunk, reference block) float32 similarity tile.
BLOCK_BYTES = 128 * 2**20
#: Pairs whose bfloat16 cosine is at least ``threshold - BF16_MARGIN`` are re-checked in float32.
BF16_MARGIN = 1 / 32
SCREENS = ("float32", "bfloat16")


def _tile_max(chunk: torch.Tensor, tile: torch.Tensor, chunk_bf16: torch.Tensor | None, tile_bf16: torch.Tensor | None,
              threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``chunk`` (C, D) the highest cosine to a row of ``tile`` (B, D) and its index.

    Without the bfloat16 copies: the float32 maximum. With them (``screen="bfloat16"``): rows whose
    bfloat16 maximum is >= threshold - BF16_MARGIN get their float32 maximum, the others -inf (index
    -1); exact wherever the true maximum is >= threshold.
    """
    if chunk_bf16 is None:
        return (chunk @ tile.T).max(dim=1)  # (C, B) -> (C,)
    lower = torch.tensor(threshold - BF16_MARGIN, dtype=torch.bfloat16, device=chunk.device)
    near = ((chunk_bf16 @ tile_bf16.T).amax(dim=1) >= lower).nonzero().flatten()  # (C, B) -> (C,) -> rows
    value = torch.full((len(chunk),), -math.inf, device=chunk.device)
    arg = torch.full((len(chunk),), -1, dtype=torch.int64, device=chunk.device)
    if len(near):
        value[near], arg[near] = (chunk[near] @ tile.T).max(dim=1)  # float32, for the few rows near the threshold
    return value, arg


def _block_rows(chunk_size: int, block_bytes: int) -> int:
    """Reference rows per tile so that a (chunk_size, rows) float32 tile fits in ``block_bytes``."""
    return max(1, block_bytes // (4 * max(chunk_size, 1)))


@contextmanager
def _exact_cuda_matmul() -> Iterator[None]:
    """Float32 products in float32 (no TF32) and bfloat16 ones accumulated in float32 on CUDA, restored after."""
    flags = torch.backends.cuda.matmul
    saved = flags.allow_tf32, flags.allow_bf16_reduced_precision_reduction
    flags.allow_tf32, flags.allow_bf16_reduced_precision_reduction = False, False
    try:
        yield
    finally:
        flags.allow_tf32, flags.allow_bf16_reduced_precision_reduction = saved


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
    screen: str = "float32",
    device: str | torch.device = "cpu",
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
        screen: ``float32``, or ``bfloat16`` to multiply the tiles in bfloat16 and re-check the pairs
            near the threshold in float32 (same result; see the module docstring).
        device: where the products run; the input stays on the CPU, a copy and the kept rows go to
            ``device``. On CUDA, TF32 and reduced-precision bfloat16 reductions are switched off meanwhile.
    Returns:
        :class:`GreedyResult` (kept and dropped rows in visiting order).
    """
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite cosine, found {threshold}")
    if screen not in SCREENS:
        raise ValueError(f"screen must be one of {list(SCREENS)}, found {screen!r}")
    x = _as_matrix(embeddings, "embeddings").to(device)
    n = x.shape[0]
    if order is None:
        order = np.arange(n)
    order = np.asarray(order, dtype=np.int64)
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n}), found shape {order.shape}")
    with _exact_cuda_matmul():
        return _greedy(x, threshold, order, chunk_size, block_bytes, screen == "bfloat16")


def _greedy(x: torch.Tensor, threshold: float, order: np.ndarray, chunk_size: int, block_bytes: int,
            bf16: bool) -> GreedyResult:
    """:func:`greedy_separable` on the checked (N, D) tensor ``x`` (on its device)."""
    n, d = x.shape
    kept_x = x.new_empty((n, d))  # the kept rows, in visiting order, filled as they are chosen
    kept_bf16 = x.new_empty((n, d), dtype=torch.bfloat16) if bf16 else None
    kept_rows = np.empty(n, dtype=np.int64)  # kept_rows[p]: the input row at position p of kept_x
    n_kept = 0
    dropped: list[np.ndarray] = []
    nearest: list[np.ndarray] = []  # positions in kept_x
    similarity: list[np.ndarray] = []
    block = _block_rows(chunk_size, block_bytes)
    for start in range(0, n, chunk_size):
        rows = order[start : start + chunk_size]
        chunk = x[torch.from_numpy(rows).to(x.device)]  # (C, D)
        chunk_bf16 = chunk.to(torch.bfloat16) if kept_bf16 is not None else None
        best = torch.full((len(rows),), -math.inf, device=x.device)
        arg = torch.full((len(rows),), -1, dtype=torch.int64, device=x.device)
        for b in range(0, n_kept, block):
            e = min(b + block, n_kept)
            value, where = _tile_max(chunk, kept_x[b:e], chunk_bf16, None if kept_bf16 is None else kept_bf16[b:e],
                                     threshold)
            better = value > best
            best, arg = torch.where(better, value, best), torch.where(better, where + b, arg)
        inner = (chunk @ chunk.T).cpu().numpy()  # (C, C)
        best, arg = best.cpu(), arg.cpu()
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
        new_t = torch.from_numpy(new).to(x.device)
        kept_x[n_kept : n_kept + len(new)] = chunk[new_t]
        if kept_bf16 is not None:
            kept_bf16[n_kept : n_kept + len(new)] = chunk_bf16[new_t]
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
