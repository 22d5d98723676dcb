"""embedding.similarity: tiled nearest neighbours and the greedy separability rule against brute-force loops."""
from __future__ import annotations

import numpy as np
import pytest

from embedding.similarity import greedy_separable, nearest_neighbours, separability_filter


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force_greedy(x: np.ndarray, threshold: float, order: np.ndarray) -> tuple[list, list, list, list]:
    """The rule written as a loop in float64: kept, dropped, nearest kept before, that cosine."""
    x = x.astype(np.float64)
    kept: list[int] = []
    dropped, nearest, similarity = [], [], []
    for i in order:
        sims = [float(x[i] @ x[j]) for j in kept]
        if sims and max(sims) >= threshold:
            dropped.append(int(i))
            nearest.append(kept[int(np.argmax(sims))])
            similarity.append(max(sims))
        else:
            kept.append(int(i))
    return kept, dropped, nearest, similarity


@pytest.mark.parametrize("chunk_size, block_bytes", [(1, 4 * 3), (7, 4 * 7 * 5), (64, 2**20), (4096, 2**27)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_the_loop_in_any_order(chunk_size: int, block_bytes: int, seed: int) -> None:
    x = unit_rows(250, 8, seed)
    order = np.random.default_rng(seed + 10).permutation(len(x))
    result = greedy_separable(x, 0.6, order, chunk_size=chunk_size, block_bytes=block_bytes)
    kept, dropped, nearest, similarity = brute_force_greedy(x, 0.6, order)
    assert 10 < len(kept) < 200
    assert result.kept.tolist() == kept and result.dropped.tolist() == dropped
    assert result.nearest.tolist() == nearest
    np.testing.assert_allclose(result.similarity, similarity, rtol=0, atol=1e-5)


def test_greedy_is_maximal_and_respects_order() -> None:
    x = unit_rows(400, 6, 3)
    order = np.random.default_rng(4).permutation(len(x))
    result = greedy_separable(x, 0.5, order, chunk_size=16, block_bytes=4 * 16 * 9)
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    kept = result.kept
    assert (sims[np.ix_(kept, kept)][~np.eye(len(kept), dtype=bool)] < 0.5).all()  # separable
    position = np.empty(len(x), int)
    position[order] = np.arange(len(x))
    for row, near in zip(result.dropped, result.nearest):  # each dropped row is blocked by a row kept before it
        assert sims[row, near] >= 0.5 and position[near] < position[row]
    assert sorted(position[kept]) == position[kept].tolist()  # kept in visiting order
    assert sorted(result.kept.tolist() + result.dropped.tolist()) == list(range(len(x)))


def test_the_order_decides_who_stays() -> None:
    # rows 0 and 1 are near copies, row 2 is apart: visiting 1 first keeps 1
    x = np.array([[1, 0, 0], [0.99, 0.141, 0], [0, 0, 1]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert greedy_separable(x, 0.9).kept.tolist() == [0, 2]
    r = greedy_separable(x, 0.9, order=np.array([1, 2, 0]))
    assert r.kept.tolist() == [1, 2] and r.dropped.tolist() == [0] and r.nearest.tolist() == [1]
    np.testing.assert_allclose(r.similarity, [x[0] @ x[1]], atol=1e-6)


def test_separability_filter_normalises_and_keeps_natural_order() -> None:
    x = unit_rows(300, 8, 5) * np.random.default_rng(6).uniform(0.5, 3, (300, 1)).astype(np.float32)
    kept = separability_filter(x, 0.55, chunk_size=13)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert kept.tolist() == brute_force_greedy(unit, 0.55, np.arange(300))[0]


@pytest.mark.parametrize("exclude_self", [False, True])
def test_nearest_neighbours_matches_the_full_product(exclude_self: bool) -> None:
    q = unit_rows(97, 12, 7)
    r = q if exclude_self else unit_rows(61, 12, 8)
    best, index = nearest_neighbours(q, r, exclude_self=exclude_self, chunk_size=10, block_bytes=4 * 10 * 7)
    sims = q.astype(np.float64) @ r.T.astype(np.float64)
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(index, sims.argmax(axis=1))
    np.testing.assert_allclose(best, sims.max(axis=1), atol=1e-6)


def test_bad_inputs_are_one_line_errors() -> None:
    x = unit_rows(5, 4, 0)
    with pytest.raises(ValueError, match="finite cosine, found nan"):
        greedy_separable(x, float("nan"))
    with pytest.raises(ValueError, match=r"permutation of range\(5\)"):
        greedy_separable(x, 0.5, order=np.array([0, 0, 1, 2, 3]))
    with pytest.raises(ValueError, match="queries are 4-d but refs are 3-d"):
        nearest_neighbours(x, x[:, :3])
    with pytest.raises(ValueError, match="all zeros"):
        separability_filter(np.zeros((2, 3)), 0.5)
