"""The frozen VQ-f4 first stage of IDiff-Face: encoder and decoder halves with their loaders.

IDiff-Face trains its diffusion model on the *continuous* latent ``quant_conv(encoder(x))`` (no
quantisation, no scale factor) and decodes samples by quantising to the nearest codebook entry
first. Both halves come from the CompVis latent-diffusion ffhq256 LDM (``ffhq.zip`` ->
``model.ckpt``, keys ``first_stage_model.*``) and are stored as two plain state dicts:

- ``first_stage_encoder_state_dict.pt``: ``encoder.*``, ``quant_conv.*`` (90 keys for VQ-f4);
- ``first_stage_decoder_state_dict.pt``: ``decoder.*``, ``quantize.embedding.weight``,
  ``post_quant_conv.*`` (115 keys for VQ-f4).

``embed_dim=3`` and ``n_embed=8192`` are fixed by that checkpoint; the architecture comes from the
``ddconfig`` in ``configs/autoencoder/vq_f4.yaml``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.autoencoder.modules import Decoder, Encoder, VectorQuantizer
from utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_file,
    save_atomic,
)

logger = logging.getLogger(__name__)

VQ_F4_EMBED_DIM = 3
VQ_F4_N_EMBED = 8192
LDM_FIRST_STAGE_PREFIX = "first_stage_model."
ENCODER_GROUPS = ("encoder.", "quant_conv.")
DECODER_GROUPS = ("decoder.", "quantize.", "post_quant_conv.")

_ORIGIN = (
    "it is the first-stage half of the CompVis latent-diffusion ffhq256 LDM (ffhq.zip -> model.ckpt, keys "
    "first_stage_model.*), released by IDiff-Face as {name}; split ffhq.zip yourself with "
    "models.autoencoder.vqgan.split_ldm_first_stage"
)
ENCODER_SOURCE_HINT = _ORIGIN.format(name="first_stage_encoder_state_dict.pt")
DECODER_SOURCE_HINT = _ORIGIN.format(name="first_stage_decoder_state_dict.pt")


class VQEncoderInterface(nn.Module):
    """Image -> continuous latent ``quant_conv(encoder(x))`` (NOT quantised), the diffusion model's x_0.

    Args:
        ddconfig: latent-diffusion ``ddconfig`` (ch, ch_mult, num_res_blocks, attn_resolutions, z_channels,
            double_z, dropout, resolution, in_channels, out_ch).
        embed_dim: latent channels after ``quant_conv`` (3 for VQ-f4).
    """

    def __init__(self, ddconfig: Mapping[str, Any], embed_dim: int = VQ_F4_EMBED_DIM) -> None:
        super().__init__()
        kwargs = dict(ddconfig)
        self.encoder = Encoder(**kwargs)
        self.quant_conv = nn.Conv2d(kwargs["z_channels"], embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) image in [-1, 1] -> h: (B, embed_dim, H/f, W/f) with f = 4 for VQ-f4."""
        return self.quant_conv(self.encoder(x))


class VQDecoderInterface(nn.Module):
    """Latent -> image: nearest-code quantisation (unless forced off), ``post_quant_conv``, decoder.

    Args:
        ddconfig: the same ``ddconfig`` as the encoder.
        embed_dim: latent channels (3 for VQ-f4).
        n_embed: codebook size (8192 for VQ-f4).
        quantize_chunk_rows: latent vectors per distance-matrix chunk in :class:`VectorQuantizer`.
    """

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        embed_dim: int = VQ_F4_EMBED_DIM,
        n_embed: int = VQ_F4_N_EMBED,
        quantize_chunk_rows: int = 4096,
    ) -> None:
        super().__init__()
        kwargs = dict(ddconfig)
        self.decoder = Decoder(**kwargs)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25, chunk_rows=quantize_chunk_rows)
        self.post_quant_conv = nn.Conv2d(embed_dim, kwargs["z_channels"], kernel_size=1)

    def forward(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """h: (B, embed_dim, h, w) latent -> (B, 3, h*f, w*f) image, roughly in [-1, 1] (not clamped)."""
        if not force_not_quantize:
            h, _, _ = self.quantize(h)
        return self.decoder(self.post_quant_conv(h))


def _frozen(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: the first stage is never trained here."""
    return module.eval().requires_grad_(False)


def load_vq_encoder(
    path: str | os.PathLike,
    ddconfig: Mapping[str, Any],
    map_location: str | torch.device = "cpu",
    embed_dim: int = VQ_F4_EMBED_DIM,
) -> VQEncoderInterface:
    """Build :class:`VQEncoderInterface` on ``map_location`` and load ``path`` strictly; returned frozen, in eval.

    Raises:
        CheckpointError: the file is missing (message says where it comes from), unreadable, or its
            keys/shapes do not fit ``ddconfig``.
    """
    with torch.device(map_location):
        model = VQEncoderInterface(ddconfig, embed_dim=embed_dim)
    load_checkpoint(model, path, map_location=map_location, source_hint=ENCODER_SOURCE_HINT)
    logger.info("loaded VQ encoder from %s", path)
    return _frozen(model)


def load_vq_decoder(
    path: str | os.PathLike,
    ddconfig: Mapping[str, Any],
    map_location: str | torch.device = "cpu",
    embed_dim: int = VQ_F4_EMBED_DIM,
    n_embed: int = VQ_F4_N_EMBED,
) -> VQDecoderInterface:
    """Build :class:`VQDecoderInterface` on ``map_location`` and load ``path`` strictly; returned frozen, in eval.

    Raises:
        CheckpointError: as :func:`load_vq_encoder`.
    """
    with torch.device(map_location):
        model = VQDecoderInterface(ddconfig, embed_dim=embed_dim, n_embed=n_embed)
    load_checkpoint(model, path, map_location=map_location, source_hint=DECODER_SOURCE_HINT)
    logger.info("loaded VQ decoder from %s", path)
    return _frozen(model)


def split_first_stage_state_dict(
    state_dict: Mapping[str, torch.Tensor], prefix: str = LDM_FIRST_STAGE_PREFIX
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Cut a full LDM state dict into the encoder and decoder state dicts IDiff-Face loads.

    Keys ``<prefix>encoder.*`` and ``<prefix>quant_conv.*`` go to the encoder dict, ``<prefix>decoder.*``,
    ``<prefix>quantize.*`` and ``<prefix>post_quant_conv.*`` to the decoder dict, prefix removed and
    order kept. Keys without ``prefix`` (the diffusion model, schedules, ...) are ignored.

    Raises:
        CheckpointError: no key has ``prefix``, or a ``prefix`` key belongs to neither half (e.g. ``loss.*``).
    """
    first_stage = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not first_stage:
        raise CheckpointError(f"no key starts with {prefix!r}: this is not a latent-diffusion checkpoint with a first stage")
    encoder = {k: v for k, v in first_stage.items() if k.startswith(ENCODER_GROUPS)}
    decoder = {k: v for k, v in first_stage.items() if k.startswith(DECODER_GROUPS)}
    leftover = [prefix + k for k in first_stage if k not in encoder and k not in decoder]
    if leftover:
        raise CheckpointError(f"{len(leftover)} first-stage keys belong to neither half: {', '.join(leftover[:5])}")
    return encoder, decoder


def split_ldm_first_stage(
    ldm_checkpoint: str | os.PathLike,
    encoder_path: str | os.PathLike,
    decoder_path: str | os.PathLike,
) -> tuple[Path, Path]:
    """Write the two first-stage files from an LDM checkpoint (e.g. ``model.ckpt`` of the ffhq256 ``ffhq.zip``).

    The checkpoint is read with ``weights_only=True`` (a Lightning ``{"state_dict": ...}`` wrapper is
    unwrapped); each half is written atomically as a plain state dict.
    """
    state_dict = load_state_dict_file(
        ldm_checkpoint,
        source_hint="download ffhq.zip (CompVis latent-diffusion, LDM ffhq256) and unzip model.ckpt",
        strip_prefixes=(),
    )
    encoder, decoder = split_first_stage_state_dict(state_dict)
    out = save_atomic(encoder, encoder_path), save_atomic(decoder, decoder_path)
    logger.info("wrote %d encoder keys to %s and %d decoder keys to %s", len(encoder), out[0], len(decoder), out[1])
    return out
