"""Building blocks of the IDiff-Face ``ConditionalUNet``.

Module and attribute names follow the published IDiff-Face checkpoints, so their state-dict keys
load strictly (see ``NOTES.md`` section 3). Inside the attention blocks the features are handled as
tokens ``(B, L, C)`` (``L = H * W``): the 1x1 ``Conv1d`` projections then become plain matrix
products and the attention itself runs in ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: ``condition_type`` values that ``ResidualBlock`` implements.
CONDITION_TYPES = ("CA", "AdaGN")


@dataclass(frozen=True)
class BlockSettings:
    """What every residual and attention block of one ``ConditionalUNet`` shares.

    ``condition_type``: ``"CA"`` (the context enters by cross-attention) or ``"AdaGN"`` (added to
    the time embedding); ``attention_heads <= 0`` derives the heads from ``attention_head_channels``.
    """

    time_channels: int
    context_channels: int
    condition_type: str = "CA"
    is_context_conditional: bool = False
    attention_heads: int = 4
    attention_head_channels: int = 32
    norm_groups: int = 32

    def __post_init__(self) -> None:
        if self.condition_type not in CONDITION_TYPES:
            raise ValueError(f"condition_type must be one of {CONDITION_TYPES}, found {self.condition_type!r}")


def zero_init_(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place (used for the last layer of residual branches)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)`` (one copy for a contiguous ``x``)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def from_tokens(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)`` as a view with channels-last strides.

    Add it to a contiguous tensor as the *second* operand, so that the sum is contiguous: a
    channels-last input would make every following convolution copy its weights.
    """
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, h, w)


def conv1d_linear(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Apply a kernel-size-1 ``Conv1d`` to tokens: ``x: (B, L, C_in) -> (B, L, C_out)``."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class SinusoidalTimeEmbedding(nn.Module):
    """Sinusoidal embedding of the step index followed by a two-layer MLP.

    The first ``n_channels // 4`` features are ``[cos(t f_k), sin(t f_k)]`` (cosine first) with
    ``f_k = exp(-ln(max_period) k / half)``, ``k = 0 .. half - 1``.
    """

    def __init__(self, n_channels: int, max_period: int = 10000) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.max_period = max_period
        self.input_channels = n_channels // 4
        self.lin1 = nn.Linear(self.input_channels, n_channels)
        self.lin2 = nn.Linear(n_channels, n_channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t: (B,)`` int64 step indices (0-based) -> ``(B, n_channels)``."""
        half = self.input_channels // 2
        k = torch.arange(half, dtype=torch.float32, device=t.device)
        frequencies = torch.exp(-math.log(self.max_period) * k / half)
        args = t[:, None].float() * frequencies[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.lin1.weight.dtype)
        return self.lin2(F.silu(self.lin1(emb)))


class AdaptiveGroupNormalization(nn.Module):
    """``(1 + scale) * GroupNorm(x) + shift`` with per-sample ``scale, shift: (B, C, 1, 1)``."""

    def __init__(self, n_groups: int, n_channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(n_groups, n_channels)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, H, W)`` -> same shape."""
        # The activation goes first so that the result keeps its (contiguous) memory format: a
        # (B, C, 1, 1) first operand looks channels-last and would make the next conv copy its weights.
        h = self.norm(x)
        return torch.addcmul(h, h, scale).add_(shift)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm; the time embedding modulates the second norm (AdaGN).

    ``condition_type="AdaGN"`` with ``is_context_conditional`` also adds a projection of the
    context to the time embedding; with ``"CA"`` the context enters only through cross-attention.
    """

    def __init__(self, in_channels: int, out_channels: int, settings: BlockSettings, p_dropout: float = 0.0) -> None:
        super().__init__()
        self.uses_context = settings.is_context_conditional and settings.condition_type == "AdaGN"
        self.norm1 = nn.GroupNorm(settings.norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(settings.time_channels, out_channels))
        if self.uses_context:
            self.context_emb = nn.Sequential(nn.SiLU(), nn.Linear(settings.context_channels, out_channels))
        self.scale_emb = nn.Linear(out_channels, out_channels)
        self.shift_emb = nn.Linear(out_channels, out_channels)
        self.norm2 = AdaptiveGroupNormalization(settings.norm_groups, out_channels)
        self.dropout = nn.Dropout(p=p_dropout)
        self.conv2 = zero_init_(nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1))
        if in_channels != out_channels:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``x: (B, C_in, H, W)``, ``t_emb: (B, time_channels)``, ``c: (B, context_channels)``
        -> ``(B, C_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.time_emb(t_emb)
        if self.uses_context:
            emb = emb + self.context_emb(c)
        scale = self.scale_emb(emb)[:, :, None, None]
        shift = self.shift_emb(emb)[:, :, None, None]
        h = self.norm2(h, scale=scale, shift=shift)
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.shortcut(x)


class MultiHeadAttention(nn.Module):
    """Multi-head (cross-)attention with ``Conv1d`` (kernel 1) projections.

    Heads are contiguous groups of ``head_channels`` channels. The original scales q and k each by
    ``head_channels ** -0.25``; that equals the usual ``head_channels ** -0.5`` on the logits.
    """

    def __init__(
        self, in_channels: int, key_value_channels: int | None = None, n_heads: int = 4, head_channels: int = 32
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_channels = head_channels
        inner_channels = n_heads * head_channels
        key_value_channels = in_channels if key_value_channels is None else key_value_channels
        self.to_q = nn.Conv1d(in_channels, inner_channels, 1)
        self.to_k = nn.Conv1d(key_value_channels, inner_channels, 1)
        self.to_v = nn.Conv1d(key_value_channels, inner_channels, 1)
        self.proj_out = nn.Conv1d(inner_channels, in_channels, 1)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.n_heads, self.head_channels).transpose(1, 2)  # (B, nh, L, hs)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``x: (B, L, C)`` queries, ``c: (B, S, C_kv)`` keys/values (``x`` when None) -> ``(B, L, C)``."""
        c = x if c is None else c
        q = self._split_heads(conv1d_linear(x, self.to_q))
        k = self._split_heads(conv1d_linear(c, self.to_k))
        v = self._split_heads(conv1d_linear(c, self.to_v))
        a = F.scaled_dot_product_attention(q, k, v, scale=self.head_channels**-0.5)  # (B, nh, L, hs)
        b, _, length, _ = a.shape
        a = a.transpose(1, 2).reshape(b, length, self.n_heads * self.head_channels)
        return conv1d_linear(a, self.proj_out)


def resolve_heads(in_channels: int, n_heads: int, head_channels: int) -> int:
    """Number of heads: ``n_heads``, or ``in_channels // head_channels`` when ``n_heads <= 0``."""
    return in_channels // head_channels if n_heads is None or n_heads <= 0 else n_heads


class SpatialEmbeddingCrossAttentionBlock(nn.Module):
    """Self-attention over pixels plus cross-attention to an identity context (the paper's "CA").

    The context vector ``(B, D)`` is mapped to ``(B, D * d)`` and read as ``d`` tokens of ``D``
    channels (``d = head_channels``), then group-normed. One ``x_norm`` serves all three sub-layers.
    """

    def __init__(self, in_channels: int, context_dim: int, n_heads: int = 4, head_channels: int = 32,
                 norm_groups: int = 32) -> None:
        super().__init__()
        n_heads = resolve_heads(in_channels, n_heads, head_channels)
        inner = n_heads * head_channels
        self.context_dim = context_dim
        self.n_context_tokens = head_channels
        self.x_proj_in = nn.Conv2d(in_channels, inner, 1)
        self.x_proj_out = zero_init_(nn.Conv2d(inner, in_channels, 1))
        self.self_attention = MultiHeadAttention(inner, n_heads=n_heads, head_channels=head_channels)
        self.c_proj_in = nn.Linear(context_dim, context_dim * self.n_context_tokens)
        self.cross_attention = MultiHeadAttention(
            inner, key_value_channels=context_dim, n_heads=n_heads, head_channels=head_channels
        )
        self.x_norm = nn.GroupNorm(norm_groups, inner)
        self.c_norm = nn.GroupNorm(32, context_dim)
        self.ff = nn.Sequential(nn.Linear(inner, inner * 4), nn.GELU(), nn.Linear(inner * 4, inner))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, H, W)``, ``c: (B, context_dim)`` -> ``(B, C, H, W)``."""
        _, _, h, w = x.shape
        x_in = x
        x = self.x_proj_in(x)
        c = self.c_proj_in(c).view(-1, self.context_dim, self.n_context_tokens)  # (B, D, d)
        c = self.c_norm(c).transpose(1, 2)  # (B, d, D)
        x = x + from_tokens(self.self_attention(to_tokens(self.x_norm(x))), h, w)
        x = x + from_tokens(self.cross_attention(to_tokens(self.x_norm(x)), c), h, w)
        x = x + from_tokens(self.ff(to_tokens(self.x_norm(x))), h, w)
        return x_in + self.x_proj_out(x)


class SpatialSelfAttentionBlock(nn.Module):
    """``x + Attention(GroupNorm(x))`` over pixels (attention blocks of the AdaGN variant)."""

    def __init__(self, in_channels: int, n_heads: int = 4, head_channels: int = 32, norm_groups: int = 32) -> None:
        super().__init__()
        n_heads = resolve_heads(in_channels, n_heads, head_channels)
        self.attention = MultiHeadAttention(in_channels, n_heads=n_heads, head_channels=head_channels)
        self.norm = nn.GroupNorm(norm_groups, in_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``x: (B, C, H, W)`` -> same shape; ``c`` is ignored."""
        _, _, h, w = x.shape
        return x + from_tokens(self.attention(to_tokens(self.norm(x))), h, w)


class ResAttentionBlock(nn.Module):
    """One UNet stage block: ``ResidualBlock`` (``res``) optionally followed by attention (``attn``)."""

    def __init__(self, in_channels: int, out_channels: int, settings: BlockSettings, has_attention: bool) -> None:
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, settings)
        self.attn = attention_block(out_channels, settings) if has_attention else None

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """``x: (B, C_in, H, W)`` -> ``(B, C_out, H, W)``."""
        x = self.res(x, t_emb, c)
        return x if self.attn is None else self.attn(x, c)


class MiddleBlock(nn.Module):
    """Bottleneck: ``res1``, ``attn``, ``res2`` at constant width."""

    def __init__(self, n_channels: int, settings: BlockSettings) -> None:
        super().__init__()
        self.res1 = ResidualBlock(n_channels, n_channels, settings)
        self.attn = attention_block(n_channels, settings)
        self.res2 = ResidualBlock(n_channels, n_channels, settings)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """``x: (B, C, H, W)`` -> same shape."""
        return self.res2(self.attn(self.res1(x, t_emb, c), c), t_emb, c)


def attention_block(channels: int, settings: BlockSettings) -> nn.Module:
    """Cross-attention block for conditional ``"CA"`` models, plain self-attention otherwise."""
    heads, head_channels = settings.attention_heads, settings.attention_head_channels
    if settings.condition_type == "CA" and settings.is_context_conditional:
        return SpatialEmbeddingCrossAttentionBlock(channels, settings.context_channels, n_heads=heads,
                                                   head_channels=head_channels, norm_groups=settings.norm_groups)
    return SpatialSelfAttentionBlock(channels, n_heads=heads, head_channels=head_channels,
                                     norm_groups=settings.norm_groups)


class Resample(nn.Module):
    """A stride-2 convolution ``conv`` that halves or doubles H and W (published keys ``conv.weight``, ``conv.bias``)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, H, W)`` -> ``(B, C, H/2, W/2)`` (:class:`Downsample`) or ``(B, C, 2H, 2W)`` (:class:`Upsample`)."""
        return self.conv(x)


class Downsample(Resample):
    """3x3 convolution with stride 2: ``(B, C, H, W) -> (B, C, H/2, W/2)``."""

    def __init__(self, n_channels: int) -> None:
        super().__init__(nn.Conv2d(n_channels, n_channels, kernel_size=3, stride=2, padding=1))


class Upsample(Resample):
    """4x4 transposed convolution with stride 2: ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, n_channels: int) -> None:
        super().__init__(nn.ConvTranspose2d(n_channels, n_channels, kernel_size=4, stride=2, padding=1))
