"""Latent cache: cached latents equal on-the-fly encoding of the same images and flips; stale caches are rebuilt."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import FaceEmbeddingDataset, StepBatchSampler
from diffusion.latent_cache import LatentCache, cache_fingerprint
from embedding.files import save_embeddings
from models.autoencoder.vqgan import VQEncoderInterface
from utils.distributed import DistributedContext

DDCONFIG = {"double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
CPU = DistributedContext(0, 1, 0, torch.device("cpu"))

pytestmark = pytest.mark.usefixtures("one_thread")


def setup(tmp_path: Path, n: int = 10) -> tuple[FaceEmbeddingDataset, VQEncoderInterface, Path]:
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    names = [f"img{i}" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{name}.png")
    save_embeddings(tmp_path / "emb.npz", names, rng.normal(size=(n, 4)).astype(np.float32))
    torch.manual_seed(0)
    encoder = VQEncoderInterface(DDCONFIG).eval().requires_grad_(False)
    torch.save(encoder.state_dict(), tmp_path / "enc.pt")
    return FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=16), encoder, tmp_path / "enc.pt"


def test_cached_latents_equal_on_the_fly_encoding(tmp_path: Path) -> None:
    dataset, encoder, encoder_path = setup(tmp_path)
    fingerprint = cache_fingerprint(dataset, encoder_path, DDCONFIG)
    cache = LatentCache.load_or_build(tmp_path / "cache.pt", dataset, encoder, fingerprint, CPU, batch_size=3)
    assert cache.latents.shape == (10, 2, 3, 8, 8)
    sampler = StepBatchSampler(len(dataset), batch_size=4, seed=0)
    for step in range(3):
        indices, flips = sampler.global_batch_at(step)
        with torch.no_grad():
            on_the_fly = encoder(torch.stack([dataset[(i, f)][0] for i, f in zip(indices.tolist(), flips.tolist())]))
        torch.testing.assert_close(cache.batch(indices, flips), on_the_fly, atol=1e-5, rtol=1e-5)
    # the flipped latent is the encoding of the flipped image, not the flipped latent
    assert not torch.allclose(cache.latents[0, 1], torch.flip(cache.latents[0, 0], dims=[2]), atol=1e-4)

    reread = LatentCache.load_or_build(tmp_path / "cache.pt", dataset, encoder, fingerprint, CPU)
    assert torch.equal(reread.latents, cache.latents)


def test_fingerprint_changes_with_the_data_or_the_encoder_and_only_then(tmp_path: Path) -> None:
    """The fingerprint covers image files (name, size, mtime), image size, encoder weights and ddconfig; a cache
    built under another fingerprint is rebuilt with the current encoder."""
    dataset, encoder, encoder_path = setup(tmp_path, n=4)
    first = cache_fingerprint(dataset, encoder_path, DDCONFIG)
    cache = LatentCache.load_or_build(tmp_path / "cache.pt", dataset, encoder, first, CPU)
    # unchanged inputs (and a changed identity embedding, which the latents do not depend on): same fingerprint
    save_embeddings(tmp_path / "emb.npz", dataset.names, np.ones((4, 4), np.float32))
    again = FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=16)
    assert cache_fingerprint(again, encoder_path, DDCONFIG) == first
    assert torch.equal(LatentCache.load_or_build(tmp_path / "cache.pt", again, encoder, first, CPU).latents, cache.latents)
    # other encoder weights or settings
    with torch.no_grad():
        encoder.quant_conv.bias.add_(1.0)
    torch.save(encoder.state_dict(), encoder_path)
    new_encoder = cache_fingerprint(again, encoder_path, DDCONFIG)
    assert new_encoder != first and cache_fingerprint(again, encoder_path, {**DDCONFIG, "ch": 16}) != new_encoder
    rebuilt = LatentCache.load_or_build(tmp_path / "cache.pt", again, encoder, new_encoder, CPU)
    with torch.no_grad():
        expected = encoder(again[(2, True)][0][None])[0]
    torch.testing.assert_close(rebuilt.latents[2, 1], expected, atol=1e-5, rtol=1e-5)
    # a rewritten image (new size / mtime) or another image size
    image = tmp_path / "images" / "img1.png"
    mtime = image.stat().st_mtime_ns
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    os.utime(image, ns=(mtime + 10**9, mtime + 10**9))
    assert cache_fingerprint(again, encoder_path, DDCONFIG) not in (first, new_encoder)
    resized = FaceEmbeddingDataset(tmp_path / "images", tmp_path / "emb.npz", image_size=8)
    assert len({cache_fingerprint(resized, encoder_path, DDCONFIG), cache_fingerprint(again, encoder_path, DDCONFIG)}) == 2
