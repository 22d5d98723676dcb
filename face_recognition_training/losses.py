"""Margin-based softmax heads: CosFace, ArcFace, ElasticFace-Cos and ElasticFace-Arc.

Every head holds one class-centre matrix ``weight`` (C, D) and maps embeddings (B, D) and
labels (B,) to logits (B, C) for ``F.cross_entropy``. With ``cos_ij`` the cosine between
embedding ``i`` and centre ``j`` and ``y_i`` the label of sample ``i``:

- CosFace:         ``s * (cos_ij - m * [j == y_i])``
- ArcFace:         ``s * cos(theta_ij + m * [j == y_i])``,  ``theta_ij = arccos(cos_ij)``
- ElasticFace-Cos: CosFace with ``m_i ~ N(m, std)`` drawn per sample at every forward
- ElasticFace-Arc: ArcFace with ``m_i ~ N(m, std)`` drawn per sample at every forward

(``cos(m1 * theta + m2) - m3`` in insightface's notation: ArcFace is m2, CosFace is m3.)
As in ElasticFace/IDiff-Face, ArcFace applies ``cos(theta + m)`` without the "easy margin"
fallback for ``theta + m > pi``.

Memory: only the (B, C) cosine matrix and one scaled copy are materialised; the margin is
applied to the B target entries by gather/scatter (no one-hot (B, C) mask and no arccos of
the whole matrix), so C = 10,000+ classes costs a few MB per batch. The head always runs
in float32 (autocast disabled), because ``s = 64`` amplifies half-precision rounding.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module, ABC):
    """Base class: normalised class centres and the cosine matrix; subclasses set the target logit.

    Args:
        embedding_size: D, the backbone's output size (512).
        num_classes: C, number of training identities.
        s: logit scale.
        m: mean margin.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(
                f"{type(self).__name__}: embedding_size and num_classes must be >= 1, found {embedding_size}, {num_classes}"
            )
        self.embedding_size, self.num_classes, self.s, self.m = embedding_size, num_classes, float(s), float(m)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))  # (C, D)
        nn.init.normal_(self.weight, std=0.01)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, m={self.m}"

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosines (B, C) between L2-normalised embeddings (B, D) and L2-normalised centres, clamped to [-1, 1]."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"{type(self).__name__}: embeddings must be (B, {self.embedding_size}), found {tuple(embeddings.shape)}"
            )
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)

    def margins(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Per-sample margins (B,): the constant ``m`` here, random in the ElasticFace heads."""
        return torch.full((batch_size,), self.m, device=device)

    @abstractmethod
    def target_logit(self, cos_target: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Unscaled target logit (B,) from the target cosines (B,) and margins (B,)."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for embeddings (B, D) (any norm) and integer labels (B,) in [0, C)."""
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"{type(self).__name__}: labels must be ({embeddings.shape[0]},), found {tuple(labels.shape)}")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = self.cosine(embeddings)  # (B, C)
            index = labels.long().unsqueeze(1)  # (B, 1)
            cos_target = cos.gather(1, index).squeeze(1)  # (B,)
            m = self.margins(cos.shape[0], cos.device)  # (B,)
            logits = cos.scatter(1, index, self.target_logit(cos_target, m).unsqueeze(1))  # (B, C)
            return logits.mul_(self.s)


class CosFace(MarginHead):
    """Additive cosine margin (Wang et al. 2018): target ``cos - m``; s = 64, m = 0.35 in IDiff-Face."""

    def target_logit(self, cos_target: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return cos_target - m


class ArcFace(MarginHead):
    """Additive angular margin (Deng et al. 2019): target ``cos(arccos(cos) + m)``; s = 64, m = 0.5."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(embedding_size, num_classes, s=s, m=m)

    def target_logit(self, cos_target: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        # arccos has an infinite derivative at +-1; keep the angle strictly inside (0, pi).
        eps = 1e-7
        return torch.cos(torch.acos(cos_target.clamp(-1.0 + eps, 1.0 - eps)) + m)


class _ElasticMargins:
    """Mixin: margins drawn per sample from ``N(m, std)`` in training mode, the mean ``m`` in eval mode.

    ``std`` (0.05 in ElasticFace) comes first; ``s`` and ``m`` go on to the head (their defaults are the head's).
    """

    m: float
    training: bool

    def __init__(self, embedding_size: int, num_classes: int, std: float = 0.05, **s_and_m: float) -> None:
        super().__init__(embedding_size, num_classes, **s_and_m)  # type: ignore[call-arg]
        if std < 0:
            raise ValueError(f"{type(self).__name__}: std must be >= 0, found {std}")
        self.std = float(std)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, std={self.std}"  # type: ignore[misc]

    def margins(self, batch_size: int, device: torch.device) -> torch.Tensor:
        if not self.training or self.std == 0.0:
            return torch.full((batch_size,), self.m, device=device)
        return torch.normal(self.m, self.std, size=(batch_size,), device=device)


class ElasticCosFace(_ElasticMargins, CosFace):
    """ElasticFace-Cos (Boutros et al. 2022): CosFace with a per-sample margin ``m_i ~ N(m, std)``."""


class ElasticArcFace(_ElasticMargins, ArcFace):
    """ElasticFace-Arc (Boutros et al. 2022): ArcFace with a per-sample margin ``m_i ~ N(m, std)``."""
