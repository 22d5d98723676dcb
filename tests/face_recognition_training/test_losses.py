"""Each margin head's logits against the closed form on small hand-made inputs."""
from __future__ import annotations

import math

import pytest
import torch

from face_recognition_training.losses import (
    ArcFace,
    CosFace,
    ElasticArcFace,
    ElasticCosFace,
)


def _setup(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit class centres e0, e1, e2 in 3-D; embeddings at known angles; returns (x, y, cos)."""
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 0.5]]))  # norms do not matter
    angles = torch.tensor([0.3, 1.0])
    x = torch.stack([  # (2, 3), arbitrary norms
        5.0 * torch.tensor([math.cos(0.3), math.sin(0.3), 0.0]),
        0.2 * torch.tensor([0.0, math.cos(1.0), math.sin(1.0)]),
    ])
    y = torch.tensor([0, 1])
    cos = torch.tensor([
        [math.cos(0.3), math.sin(0.3), 0.0],
        [0.0, math.cos(1.0), math.sin(1.0)],
    ])
    assert torch.allclose(torch.acos(cos[[0, 1], y]), angles)
    return x, y, cos


def test_cosface_closed_form() -> None:
    head = CosFace(3, 3, s=64.0, m=0.35)
    x, y, cos = _setup(head)
    expected = 64.0 * cos.clone()
    expected[0, 0] = 64.0 * (math.cos(0.3) - 0.35)
    expected[1, 1] = 64.0 * (math.cos(1.0) - 0.35)
    torch.testing.assert_close(head(x, y), expected, atol=1e-4, rtol=0)


def test_arcface_closed_form() -> None:
    head = ArcFace(3, 3, s=64.0, m=0.5)
    x, y, cos = _setup(head)
    expected = 64.0 * cos.clone()
    expected[0, 0] = 64.0 * math.cos(0.3 + 0.5)
    expected[1, 1] = 64.0 * math.cos(1.0 + 0.5)
    torch.testing.assert_close(head(x, y), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cls, form", [
    (ElasticCosFace, lambda theta, m: math.cos(theta) - m),
    (ElasticArcFace, lambda theta, m: math.cos(theta + m)),
])
def test_elastic_closed_form(cls, form) -> None:
    head = cls(3, 3, s=64.0, m=0.4, std=0.05)
    x, y, cos = _setup(head)
    torch.manual_seed(7)
    logits = head(x, y)
    torch.manual_seed(7)
    m_i = torch.normal(0.4, 0.05, size=(2,))
    assert not torch.allclose(m_i, torch.full((2,), 0.4))
    expected = 64.0 * cos.clone()
    expected[0, 0] = 64.0 * form(0.3, m_i[0].item())
    expected[1, 1] = 64.0 * form(1.0, m_i[1].item())
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    # Fresh margins each forward; the mean margin in eval mode and with std = 0.
    assert not torch.allclose(head(x, y), logits)
    head.eval()
    plain = (CosFace if cls is ElasticCosFace else ArcFace)(3, 3, s=64.0, m=0.4)
    plain.weight.data.copy_(head.weight.data)
    torch.testing.assert_close(head(x, y), plain(x, y))


def test_head_scales_to_many_classes_and_trains() -> None:
    head = CosFace(512, 20_000)
    x = torch.randn(8, 512, requires_grad=True)
    y = torch.randint(0, 20_000, (8,))
    loss = torch.nn.functional.cross_entropy(head(x, y), y)
    loss.backward()
    assert head.weight.grad.shape == (20_000, 512)
    assert torch.isfinite(x.grad).all()


def test_bad_shapes_are_named() -> None:
    head = CosFace(4, 3)
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 4\)"):
        head(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be"):
        head(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long))
