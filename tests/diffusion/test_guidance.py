"""Negative-context guidance: the combined update, the batched call, the choice of negatives."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from contexts.sources import save_original_contexts
from diffusion.guidance import NegativeSettings, choose_negatives, negative_contexts
from diffusion.samplers import guided_eps
from embedding.files import EmbeddingSet, save_embeddings


class RecordingToy(nn.Module):
    """eps = 0.5 x_t + 0.1 t + (first three context entries), the empty context giving 0; records each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, torch.Tensor | None]] = []

    def forward(self, x_t, t, context=None, dropout_mask=None):
        self.calls.append((len(x_t), None if dropout_mask is None else dropout_mask.clone()))
        c = torch.zeros(len(x_t), 3) if context is None else context[:, :3].clone()
        if dropout_mask is not None:
            c[dropout_mask] = 0.0
        return 0.5 * x_t + 0.1 * t.view(-1, 1, 1, 1) + c.view(-1, 3, 1, 1)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64), torch.tensor([3, 5, 7, 9]),
            torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("w, s", [(1.0, 0.5), (2.5, 0.5), (0.0, 1.0), (3.0, -0.7), (1.7, 0.0)])
def test_combined_update_against_the_formula(batch, w, s):
    """eps = (1 - w) eps(x, empty) + (w + s) eps(x, c) - s eps(x, c_neg), written out with the toy's closed form."""
    x, t, c, c_neg = batch
    model = RecordingToy()
    ours = guided_eps(model, x, t, c, w, c_neg, s)
    base = 0.5 * x + 0.1 * t.view(-1, 1, 1, 1)
    eps_u, eps_c, eps_n = base, base + c[:, :3].view(-1, 3, 1, 1), base + c_neg[:, :3].view(-1, 3, 1, 1)
    torch.testing.assert_close(ours, (1 - w) * eps_u + (w + s) * eps_c - s * eps_n, atol=1e-12, rtol=1e-12)
    (rows, mask), = model.calls  # exactly one model call per step
    assert rows == 4 * (1 + (w != 1.0) + (s != 0.0))
    expected_mask = [False] * 4 + ([True] * 4 if w != 1.0 else []) + ([False] * 4 if s != 0.0 else [])
    assert (mask is None and not any(expected_mask)) or mask.tolist() == expected_mask


def test_plain_and_unconditional_cases_are_bitwise(batch):
    x, t, c, c_neg = batch
    model = RecordingToy()
    cond, uncond = model(x, t, c), model(x, t, c, torch.ones(4, dtype=torch.bool))
    assert torch.equal(guided_eps(model, x, t, c), cond)
    assert torch.equal(guided_eps(model, x, t, c, 1.0, c_neg, 0.0), cond)  # scale 0: no negative branch
    assert torch.equal(guided_eps(model, x, t, c, 0.0, c_neg, 0.0), uncond)
    model.calls.clear()
    cfg = guided_eps(model, x, t, c, 2.0, c_neg, 0.0)
    assert torch.equal(cfg, guided_eps(model, x, t, c, 2.0)) and model.calls[0][0] == 8
    with pytest.raises(ValueError, match="needs a conditional model"):
        guided_eps(model, x, t, None, 1.0, c_neg, 0.5)
    with pytest.raises(ValueError, match=r"negative_context has shape \(2, 8\), expected \(4, 8\)"):
        guided_eps(model, x, t, c, 1.0, c_neg[:2], 0.5)


def brute_force(embeddings: torch.Tensor, mode: str) -> torch.Tensor:
    """The full N x N cosine matrix in float64 with the diagonal excluded; argmax / argmin per row."""
    x = embeddings.double() / embeddings.double().norm(dim=1, keepdim=True)
    sim = x @ x.T
    fill = -torch.inf if mode == "close" else torch.inf
    sim.fill_diagonal_(fill)
    return sim.argmax(dim=1) if mode == "close" else sim.argmin(dim=1)


@pytest.mark.parametrize("mode", ["close", "far"])
@pytest.mark.parametrize("chunk_size", [7, 4096])
def test_choice_equals_brute_force(mode, chunk_size):
    embeddings = torch.randn(53, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    expected = brute_force(embeddings, mode)
    assert torch.equal(choose_negatives(embeddings, mode, chunk_size=chunk_size), expected)
    rows = [52, 0, 17, 17, 8]
    assert torch.equal(choose_negatives(embeddings, mode, rows, chunk_size=chunk_size), expected[rows])
    assert (choose_negatives(embeddings, mode, chunk_size=chunk_size) != torch.arange(53)).all()


def test_choice_ties_and_errors():
    """Exact duplicates: a row's twin is its closest other context; equal scores go to the lowest index."""
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    assert choose_negatives(base, "close", chunk_size=2).tolist() == [2, 3, 0, 1, 1]
    assert choose_negatives(base, "far", chunk_size=2).tolist() == [4, 0, 4, 0, 0]
    with pytest.raises(ValueError, match="at least 2 contexts"):
        choose_negatives(base[:1], "close")
    with pytest.raises(ValueError, match="'close' or 'far'"):
        choose_negatives(base, "median")


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_file_negatives_are_matched_by_name(tmp_path: Path, suffix: str):
    names = ["a", "b", "c"]
    contexts = np.eye(3, 4, dtype=np.float32)
    given = EmbeddingSet(["x", "c", "a", "b"], np.arange(16, dtype=np.float32).reshape(4, 4))
    path = tmp_path / f"negatives{suffix}"
    if suffix == ".npz":
        save_embeddings(path, given.names, given.embeddings)
    else:
        save_original_contexts(path, given)
    settings = NegativeSettings("file", 0.5, str(path))
    out = negative_contexts(settings, names, contexts, [2, 0])
    np.testing.assert_array_equal(out, given.embeddings[[1, 2]])
    with pytest.raises(ValueError, match=r"no negative for 1 identities, e.g. \['d'\]"):
        negative_contexts(settings, names + ["d"], np.eye(4, 4, dtype=np.float32), [3])
    with pytest.raises(ValueError, match="holds 4-d contexts, expected 5-d"):
        negative_contexts(settings, names, np.zeros((3, 5), dtype=np.float32), [0])


def test_close_and_far_negatives_are_context_rows():
    contexts = torch.randn(9, 6, generator=torch.Generator().manual_seed(4)).numpy()
    names = [str(i) for i in range(9)]
    for mode in ("close", "far"):
        out = negative_contexts(NegativeSettings(mode), names, contexts, [3, 8])
        np.testing.assert_array_equal(out, contexts[brute_force(torch.from_numpy(contexts), mode)[[3, 8]].numpy()])


def test_negative_settings_validation():
    assert NegativeSettings("far").active
    assert not NegativeSettings().active and not NegativeSettings("close", 0.0).active
    with pytest.raises(ValueError, match="sampling.negative.mode must be null or one of"):
        NegativeSettings("closest")
    with pytest.raises(ValueError, match="sampling.negative.scale must be a finite number, found nan"):
        NegativeSettings("close", float("nan"))
    with pytest.raises(ValueError, match="sampling.negative.file must be set exactly when"):
        NegativeSettings("file")
    with pytest.raises(ValueError, match="sampling.negative.file must be set exactly when"):
        NegativeSettings("close", 0.5, "negatives.npz")
