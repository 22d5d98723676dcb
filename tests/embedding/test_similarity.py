"""embedding.similarity: tiled nearest neighbours and the greedy separability rule against brute-force loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedding.similarity import greedy_separable, nearest_neighbours, separability_filter


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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
@pytest.mark.parametrize("screen", ["float32", "bfloat16"])
def test_greedy_matches_the_loop_in_any_order(chunk_size: int, block_bytes: int, seed: int, screen: str) -> None:
    x = unit_rows(250, 8, seed)
    order = np.random.default_rng(seed + 10).permutation(len(x))
    result = greedy_separable(x, 0.6, order, chunk_size=chunk_size, block_bytes=block_bytes, screen=screen)
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


def near_threshold_pairs(threshold: float, n_pairs: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows a_i then b_i with cos(a_i, b_i) = threshold + delta_i, delta_i in [-0.003, 0.003]."""
    rng = np.random.default_rng(seed)
    cos = threshold + rng.uniform(-0.003, 0.003, n_pairs)
    a = unit_rows(n_pairs, dim, seed).astype(np.float64)
    b = rng.standard_normal((n_pairs, dim))
    b = unit(b - (b * a).sum(axis=1, keepdims=True) * a)  # orthogonal to a_i
    partner = cos[:, None] * a + np.sqrt(1 - cos**2)[:, None] * b
    return np.concatenate([a, partner]).astype(np.float32), cos


def test_bfloat16_screen_decides_near_threshold_pairs_in_float32() -> None:
    # the threshold halfway between two bfloat16 numbers (0.59765625, 0.6015625): pairs just above it
    # can come out of a bfloat16 product below it; the margin sends them to the float32 check
    threshold = 0.599609375
    x, cos = near_threshold_pairs(threshold, 1000, 512, seed=0)
    a, b = torch.from_numpy(x[:1000]).bfloat16().double(), torch.from_numpy(x[1000:]).bfloat16().double()
    screened = (a * b).sum(dim=1).bfloat16().float().numpy() >= threshold  # exact dot of the rounded rows, rounded
    assert (~screened & (cos >= threshold)).any()  # bfloat16 alone would keep some of these partners
    expected = brute_force_greedy(x, threshold, np.arange(len(x)))
    for chunk_size in (16, 4096):
        result = greedy_separable(x, threshold, chunk_size=chunk_size, block_bytes=4 * chunk_size * 50,
                                  screen="bfloat16")
        assert result.kept.tolist() == expected[0] and result.nearest.tolist() == expected[2]
        np.testing.assert_allclose(result.similarity, expected[3], rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("screen", ["float32", "bfloat16"])
def test_greedy_on_cuda_equals_the_cpu(screen: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = np.concatenate([near_threshold_pairs(0.5, 100, 512, seed=1)[0], unit_rows(3000, 512, 2)])
    order = np.random.default_rng(3).permutation(len(x))
    cpu = greedy_separable(x, 0.5, order, chunk_size=256)
    cuda = greedy_separable(x, 0.5, order, chunk_size=256, screen=screen, device="cuda")
    assert cuda.kept.tolist() == cpu.kept.tolist() and cuda.nearest.tolist() == cpu.nearest.tolist()
    np.testing.assert_allclose(cuda.similarity, cpu.similarity, rtol=0, atol=1e-5)


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
    with pytest.raises(ValueError, match="screen must be one of"):
        greedy_separable(x, 0.5, screen="float16")
    with pytest.raises(ValueError, match=r"permutation of range\(5\)"):
        greedy_separable(x, 0.5, order=np.array([0, 0, 1, 2, 3]))
    with pytest.raises(ValueError, match="queries are 4-d but refs are 3-d"):
        nearest_neighbours(x, x[:, :3])
    with pytest.raises(ValueError, match="all zeros"):
        separability_filter(np.zeros((2, 3)), 0.5)
