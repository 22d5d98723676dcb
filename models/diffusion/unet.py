"""``ConditionalUNet``: the identity-conditioned eps-model of IDiff-Face.

Argument names, module names and hence state-dict keys equal the original IDiff-Face UNet, so its
checkpoints load with ``strict=True``. The paper model uses ``condition_type="CA"``: the projected
identity context enters every attention block through cross-attention, and contextual partial
dropout (CPD, ``context_dropout_probability``) drops components of the projected context while
training.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.diffusion.nn import (
    CONDITION_TYPES,
    BlockSettings,
    Downsample,
    MiddleBlock,
    ResAttentionBlock,
    SinusoidalTimeEmbedding,
    Upsample,
    zero_init_,
)


class ConditionalUNet(nn.Module):
    """UNet predicting the noise ``eps`` of a latent ``x_t`` given step ``t`` and identity context.

    Level ``i`` has width ``initial_channels * prod(channel_multipliers[:i + 1])`` (the multipliers
    are cumulative). Each level has ``n_blocks_per_resolution`` down blocks and that many plus one
    up blocks; the up path concatenates one skip (every down output) per block.

    Args:
        input_channels: channels of ``x`` and of ``eps`` (3 for VQ-f4 latents).
        initial_channels: width of the first level; the time embedding has 4x this width.
        channel_multipliers: cumulative width multiplier per level.
        is_attention: per level, whether the blocks carry an attention block.
        attention_heads: number of heads, or ``<= 0`` to use ``width // attention_head_channels``.
        attention_head_channels: channels per head (and number of context tokens for ``"CA"``).
        n_blocks_per_resolution: residual blocks per level on the down path.
        condition_type: ``"CA"`` (cross-attention, the paper) or ``"AdaGN"`` (context added to
            the time embedding of each residual block).
        is_context_conditional: whether a context is used at all.
        n_context_classes: ``> 0`` embeds class labels ``(B,)`` instead of projecting vectors.
        context_input_channels: size of the context vectors (512 for ElasticFace embeddings).
        context_channels: size of the projected context.
        learn_empty_context: learn the embedding used for missing / dropped contexts (else zeros).
        context_dropout_probability: CPD rate, element-wise dropout on the projected context.
        use_checkpoint: gradient checkpointing of each block while training (saves memory; the
            forward result is unchanged).
        norm_groups: GroupNorm groups of the feature maps (32 in the original, not a parameter
            there). Small models want widths of at least 4 x norm_groups: with one channel per
            group every norm removes each channel's spatial mean, so the network cannot see or
            predict the mean colour of x_t and pixel-space samples get colour casts.
    """

    def __init__(
        self,
        input_channels: int = 3,
        initial_channels: int = 64,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        is_attention: Sequence[bool] = (False, False, True, True),
        attention_heads: int = 4,
        attention_head_channels: int = 32,
        n_blocks_per_resolution: int = 2,
        condition_type: str = "CA",
        is_context_conditional: bool = False,
        n_context_classes: int = 0,
        context_input_channels: int = 512,
        context_channels: int = 512,
        learn_empty_context: bool = False,
        context_dropout_probability: float = 0.0,
        use_checkpoint: bool = False,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if condition_type not in CONDITION_TYPES:
            raise ValueError(f"condition_type must be one of {CONDITION_TYPES}, found {condition_type!r}")
        if len(is_attention) != len(channel_multipliers):
            raise ValueError(
                f"is_attention needs one entry per level ({len(channel_multipliers)} channel_multipliers), "
                f"found {len(is_attention)}"
            )
        self.input_channels = input_channels
        self.is_context_conditional = is_context_conditional
        self.n_context_classes = n_context_classes
        self.context_input_channels = context_input_channels
        self.context_channels = context_channels
        self.use_checkpoint = use_checkpoint

        self.image_proj = nn.Conv2d(input_channels, initial_channels, kernel_size=3, padding=1)
        time_channels = initial_channels * 4
        self.time_emb = SinusoidalTimeEmbedding(time_channels)

        if is_context_conditional:
            self.context_dropout = nn.Dropout(p=context_dropout_probability)
            if n_context_classes > 0:
                self.context_emb: nn.Module = nn.Embedding(n_context_classes, context_channels)
            else:
                self.context_emb = nn.Linear(context_input_channels, context_channels)
            if learn_empty_context:
                self.empty_context_embedding = nn.Parameter(torch.randn(context_channels))
            else:
                self.empty_context_embedding = None

        settings = BlockSettings(time_channels, context_channels, condition_type, is_context_conditional,
                                 attention_heads, attention_head_channels, norm_groups)

        def block(c_in: int, c_out: int, level: int) -> ResAttentionBlock:
            return ResAttentionBlock(c_in, c_out, settings, is_attention[level])

        n_levels = len(channel_multipliers)
        down: list[nn.Module] = []
        channels = initial_channels
        for level, mult in enumerate(channel_multipliers):
            out_channels = channels * mult
            for _ in range(n_blocks_per_resolution):
                down.append(block(channels, out_channels, level))
                channels = out_channels
            if level < n_levels - 1:
                down.append(Downsample(channels))
        self.down = nn.ModuleList(down)

        self.middle = MiddleBlock(channels, settings)

        up: list[nn.Module] = []
        for level in reversed(range(n_levels)):
            for _ in range(n_blocks_per_resolution):
                up.append(block(2 * channels, channels, level))  # input: (x, skip) of equal width
            out_channels = channels // channel_multipliers[level]
            up.append(block(channels + out_channels, out_channels, level))
            channels = out_channels
            if level > 0:
                up.append(Upsample(channels))
        self.up = nn.ModuleList(up)

        self.norm = nn.GroupNorm(norm_groups, initial_channels)
        self.final = zero_init_(nn.Conv2d(channels, input_channels, kernel_size=3, padding=1))

    def embed_context(
        self, batch_size: int, context: torch.Tensor | None, dropout_mask: torch.Tensor | None, like: torch.Tensor
    ) -> torch.Tensor:
        """Projected context ``c: (B, context_channels)``, with empty rows and CPD applied.

        ``context=None`` gives the empty context (zeros or the learned one) without calling
        ``context_emb``; rows where ``dropout_mask`` is True get the empty context too. CPD is
        applied to given contexts only, in train mode (``nn.Dropout``).
        """
        if self.empty_context_embedding is None:
            empty = like.new_zeros(self.context_channels)
        else:
            empty = self.empty_context_embedding.to(like.dtype)
        if context is None:
            return empty.expand(batch_size, -1)
        self._check_context(batch_size, context, dropout_mask)
        c = self.context_emb(context)
        if dropout_mask is not None:
            c = torch.where(dropout_mask[:, None], empty.to(c.dtype), c)
        return self.context_dropout(c)

    def _check_context(self, batch_size: int, context: torch.Tensor, dropout_mask: torch.Tensor | None) -> None:
        expected = (batch_size,) if self.n_context_classes > 0 else (batch_size, self.context_input_channels)
        if tuple(context.shape) != expected:
            raise ValueError(
                f"context must have shape {expected} (batch, context_input_channels={self.context_input_channels})"
                f", found {tuple(context.shape)}"
            )
        if dropout_mask is not None and (dropout_mask.dtype != torch.bool or tuple(dropout_mask.shape) != (batch_size,)):
            raise ValueError(
                f"dropout_mask must be a bool tensor of shape ({batch_size},), "
                f"found {dropout_mask.dtype} {tuple(dropout_mask.shape)}"
            )

    def _run(self, module: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        """Call ``module``, through gradient checkpointing when enabled and training."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        dropout_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: ``(B, input_channels, H, W)`` noisy latent ``x_t``; H and W divisible by
                ``2 ** (levels - 1)``.
            t: ``(B,)`` int64 step indices, 0-based (``0 .. T-1``).
            context: ``(B, context_input_channels)`` identity embeddings (``(B,)`` int64 labels
                when ``n_context_classes > 0``), or None for the empty context. Ignored by
                unconditional models.
            dropout_mask: ``(B,)`` bool, True where a sample gets the empty context.

        Returns:
            eps: ``(B, input_channels, H, W)``.
        """
        batch_size = x.shape[0]
        t_emb = self.time_emb(t)
        x = self.image_proj(x)
        c = self.embed_context(batch_size, context, dropout_mask, x) if self.is_context_conditional else None

        skips = [x]
        for module in self.down:
            x = module(x) if isinstance(module, Downsample) else self._run(module, x, t_emb, c)
            skips.append(x)
        x = self._run(self.middle, x, t_emb, c)
        for module in self.up:
            if isinstance(module, Upsample):
                x = module(x)
            else:
                x = self._run(module, torch.cat((x, skips.pop()), dim=1), t_emb, c)
        return self.final(F.silu(self.norm(x)))
