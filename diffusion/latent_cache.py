"""Latent cache: encode every training image once (both flips) with the frozen VQ encoder.

The encoder is frozen and deterministic, so ``encoder(flip(image))`` is the same at every step; caching
it removes the encoder from the training step (more than half of a CPU step, see SPEED.md). The file
holds ``latents`` (N, 2, C, h, w) float32 (index 1 = flipped), the image ``names`` and a
``fingerprint`` of images, image size and encoder weights; a cache whose fingerprint differs is
rebuilt. Under DDP every rank encodes a shard, rank 0 merges.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from diffusion.data import FaceEmbeddingDataset
from utils.checkpoint import save_atomic, torch_load
from utils.distributed import DistributedContext, barrier

logger = logging.getLogger(__name__)


def cache_fingerprint(dataset: FaceEmbeddingDataset, encoder_path: str | os.PathLike, ddconfig: Mapping[str, Any]) -> str:
    """sha256 over image names, sizes and mtimes, the image size, the encoder file and its ``ddconfig``."""
    h = hashlib.sha256()
    h.update(f"{dataset.image_size}|{sorted(dict(ddconfig).items())}".encode())
    for name, path in zip(dataset.names, dataset.paths):
        stat = path.stat()
        h.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    with open(encoder_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_items(
    dataset: FaceEmbeddingDataset,
    encoder: nn.Module,
    indices: list[int],
    device: torch.device,
    batch_size: int = 32,
    progress: bool = True,
) -> torch.Tensor:
    """Latents (len(indices), 2, C, h, w) float32 on the CPU of the given images, unflipped and flipped."""
    items = [(i, flip) for i in indices for flip in (False, True)]
    out = []
    for start in tqdm(range(0, len(items), batch_size), desc="encoding latents", disable=not progress):
        x = torch.stack([dataset[item][0] for item in items[start:start + batch_size]]).to(device)
        out.append(encoder(x).float().cpu())
    latents = torch.cat(out) if out else torch.zeros(0)
    return latents.view(len(indices), 2, *latents.shape[1:])


class LatentCache:
    """Cached latents: ``batch(indices, flips) -> (B, C, h, w)``."""

    def __init__(self, latents: torch.Tensor, names: list[str]) -> None:
        self.latents = latents
        self.names = names

    def batch(self, indices: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """indices (B,) int64, flips (B,) bool -> x0 (B, C, h, w) float32."""
        return self.latents[indices, flips.long()]

    @classmethod
    def load_or_build(
        cls,
        path: str | os.PathLike,
        dataset: FaceEmbeddingDataset,
        encoder: nn.Module,
        fingerprint: str,
        ctx: DistributedContext,
        batch_size: int = 32,
    ) -> LatentCache:
        """Read the cache at ``path`` when its fingerprint and names match ``dataset``; else encode and write it."""
        path = Path(path)
        cached = cls._read(path, fingerprint, dataset.names)
        if cached is not None:
            logger.info("using latent cache %s (%d images x 2 flips)", path, len(dataset))
            return cached
        barrier(ctx)  # every rank has read the stale state before rank 0 replaces it
        shard = list(range(ctx.rank, len(dataset), ctx.world_size))
        logger.info("building latent cache %s: encoding %d images x 2 flips on rank %d", path, len(shard), ctx.rank)
        latents = encode_items(dataset, encoder, shard, ctx.device, batch_size, progress=ctx.is_main)
        part = path.with_name(f"{path.name}.part{ctx.rank}")
        if ctx.is_distributed:
            save_atomic(latents, part)
        barrier(ctx)
        if ctx.is_main:
            if ctx.is_distributed:
                full = torch.empty(len(dataset), *latents.shape[1:])
                for rank in range(ctx.world_size):
                    part_path = path.with_name(f"{path.name}.part{rank}")
                    full[rank::ctx.world_size] = torch_load(part_path)
                    part_path.unlink()
                latents = full
            save_atomic({"fingerprint": fingerprint, "names": list(dataset.names), "latents": latents}, path)
            logger.info("wrote latent cache %s (%.1f MB)", path, path.stat().st_size / 2**20)
        barrier(ctx)
        if ctx.is_distributed and not ctx.is_main:
            cached = cls._read(path, fingerprint, dataset.names)
            if cached is None:
                raise RuntimeError(f"latent cache {path} written by rank 0 is not readable on rank {ctx.rank}")
            return cached
        return cls(latents, list(dataset.names))

    @classmethod
    def _read(cls, path: Path, fingerprint: str, names: list[str]) -> LatentCache | None:
        if not path.is_file():
            return None
        state = torch_load(path, source_hint="a latent cache written by training")
        if not isinstance(state, dict) or state.get("fingerprint") != fingerprint or state.get("names") != list(names):
            logger.info("latent cache %s is stale (images or encoder changed); rebuilding it", path)
            return None
        return cls(state["latents"], list(state["names"]))
