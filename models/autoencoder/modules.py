"""Building blocks of the VQ-f4 first stage: convolutional Encoder/Decoder and the vector quantizer.

The module tree (and therefore every state-dict key) follows the CompVis latent-diffusion
autoencoder, so the published ``first_stage_model.*`` weights load strictly:

- ``encoder``: ``conv_in``, ``down.<level>.{block.<i>, attn.<i>, downsample}``, ``mid.{block_1, attn_1,
  block_2}``, ``norm_out``, ``conv_out``;
- ``decoder``: ``conv_in``, ``mid.*``, ``up.<level>.{block.<i>, attn.<i>, upsample}`` (stored in ascending
  level order although it runs from the deepest level up), ``norm_out``, ``conv_out``;
- ``quantize.embedding.weight``: the ``(n_embed, embed_dim)`` codebook.

Every convolution works on ``(B, C, H, W)`` tensors; channels-last inputs are fine.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups and eps 1e-6, as in every normalisation of the VQ autoencoder."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """``x + conv2(swish(norm2(conv1(swish(norm1(x))))))``, with a 1x1 ``nin_shortcut`` when widths differ.

    The VQ autoencoder has no time embedding, so there is no ``temb_proj``.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        # nn.Identity has no parameters, so equal widths add no state-dict key.
        self.nin_shortcut: nn.Module = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv ``q``, ``k``, ``v``, ``proj_out`` and scale C^-1/2.

    Runs through ``F.scaled_dot_product_attention`` (fused kernel, no explicit (HW x HW) matrix
    where the backend avoids it); the softmax(q k^T / sqrt(C)) v result is the same.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        b, c, height, width = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head whose tokens are the spatial positions.
        q, k, v = (conv(h).flatten(2).transpose(1, 2).unsqueeze(1) for conv in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        h = h.squeeze(1).transpose(1, 2).reshape(b, c, height, width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Asymmetric zero pad (left 0, right 1, top 0, bottom 1) then a 3x3 stride-2 conv: H, W -> H/2, W/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H/2, W/2)."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: H, W -> 2H, 2W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (AttnBlocks, may be empty), optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, C_in, H, W) -> (B, C_out, H', W') through blocks, attention and the resampler if any."""
        for i, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[i](h)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                h = getattr(self, name)(h)
        return h


class _Mid(nn.Module):
    """``block_1`` -> ``attn_1`` -> ``block_2`` at the lowest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, C, H, W) -> (B, C, H, W)."""
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, R, R) -> latent (B, z_channels [x2 if double_z], R/f, R/f), f = 2^(len(ch_mult)-1).

    Arguments are the ``ddconfig`` of a latent-diffusion first stage; ``out_ch`` is the decoder's and is
    accepted only so the whole ``ddconfig`` can be passed as keywords.
    """

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
        dropout: float = 0.0,
        out_ch: int | None = None,
    ) -> None:
        super().__init__()
        del out_ch  # decoder-only entry of ddconfig
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_mult = (1, *ch_mult)
        res = resolution
        levels = []
        for i, mult in enumerate(ch_mult):
            c_in, c_out = ch * in_mult[i], ch * mult
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, dropout) for j in range(num_res_blocks)]
            attns = [AttnBlock(c_out) for _ in range(num_res_blocks)] if res in attn_resolutions else []
            level = _Level(blocks, attns)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(c_out)
                res //= 2
            levels.append(level)
        self.down = nn.ModuleList(levels)
        c_last = ch * ch_mult[-1]
        self.mid = _Mid(c_last, dropout)
        self.norm_out = group_norm(c_last)
        self.conv_out = nn.Conv2d(c_last, 2 * z_channels if double_z else z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) -> (B, z_channels, H/f, W/f)."""
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, r, r) -> image (B, out_ch, r*f, r*f), f = 2^(len(ch_mult)-1).

    Each level holds ``num_res_blocks + 1`` ResnetBlocks. ``in_channels`` and ``double_z`` belong to the
    encoder and are accepted only so the whole ``ddconfig`` can be passed as keywords.
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        in_channels: int | None = None,
        double_z: bool | None = None,
    ) -> None:
        super().__init__()
        del in_channels, double_z  # encoder-only entries of ddconfig
        n_levels = len(ch_mult)
        c_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n_levels - 1)
        self.conv_in = nn.Conv2d(z_channels, c_in, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(c_in, dropout)
        levels: list[_Level] = []
        for i in reversed(range(n_levels)):  # built deepest first, stored ascending
            c_out = ch * ch_mult[i]
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, dropout) for j in range(num_res_blocks + 1)]
            attns = [AttnBlock(c_out) for _ in range(num_res_blocks + 1)] if res in attn_resolutions else []
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(c_out)
                res *= 2
            levels.insert(0, level)
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, z_channels, h, w) -> (B, out_ch, h*f, w*f)."""
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantisation (taming ``VectorQuantizer2`` with ``legacy=True``, ``beta=0.25``).

    The distance matrix is built ``chunk_rows`` latent vectors at a time, so memory stays at
    ``chunk_rows x n_embed`` floats whatever the batch size (128 MiB for 4096 x 8192 in float32; one
    unchunked 50-image batch of 32x32 latents would need 1.6 GiB).
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25, chunk_rows: int = 4096) -> None:
        super().__init__()
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.n_embed, self.embed_dim, self.beta, self.chunk_rows = n_embed, embed_dim, beta, chunk_rows
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def nearest_indices(self, z_flat: torch.Tensor) -> torch.Tensor:
        """z_flat: (N, embed_dim) -> (N,) int64 index of the closest codebook vector (squared L2).

        argmin_n ||z||^2 + ||e_n||^2 - 2 z.e_n; the ||z||^2 term is constant per row and left out.
        Distances are computed in float32 with autocast off, so mixed precision cannot flip an index.
        """
        codebook = self.embedding.weight.float()  # (n_embed, embed_dim)
        out = torch.empty(z_flat.shape[0], dtype=torch.long, device=z_flat.device)
        with torch.autocast(device_type=z_flat.device.type, enabled=False):
            e_sq = codebook.pow(2).sum(dim=1)  # (n_embed,)
            for start in range(0, z_flat.shape[0], self.chunk_rows):
                chunk = z_flat[start:start + self.chunk_rows].float()
                d = torch.addmm(e_sq, chunk, codebook.t(), alpha=-2.0)  # (chunk, n_embed)
                out[start:start + chunk.shape[0]] = d.argmin(dim=1)
        return out

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise a latent.

        Args:
            z: (B, embed_dim, H, W) continuous latent.

        Returns:
            z_q: (B, embed_dim, H, W), ``z + (z_q - z).detach()`` (straight-through gradient);
            emb_loss: () scalar, ``mean((z_q - z)^2) + beta * mean((z_q - z)^2)`` (legacy order);
            indices: (B*H*W,) int64 codebook indices in (b, h, w) order.
        """
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"z must be (B, {self.embed_dim}, H, W), got {tuple(z.shape)}")
        z_bhwc = z.permute(0, 2, 3, 1)  # (B, H, W, C)
        indices = self.nearest_indices(z_bhwc.reshape(-1, self.embed_dim))
        z_q = self.embedding(indices).view(z_bhwc.shape)
        emb_loss = torch.mean((z_q.detach() - z_bhwc) ** 2) + self.beta * torch.mean((z_q - z_bhwc.detach()) ** 2)
        z_q = z_bhwc + (z_q - z_bhwc).detach()
        return z_q.permute(0, 3, 1, 2), emb_loss, indices
