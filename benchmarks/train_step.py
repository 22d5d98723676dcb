"""Training-step throughput with the VQ encoder on the fly vs the latent cache (full-size models, random weights).

Run from the project root: ``python benchmarks/train_step.py``. One step = (encode the batch with the
frozen VQ-f4 encoder, on-the-fly mode only) + DDPM loss of the full-size ``unet_cond_ca_cpd25`` UNet
+ backward + Adam + EMA update, at batch 8 on 128x128 images (3x32x32 latents), float32 on the CPU
(or the configured device). A small image folder is written to a temp dir, its latent cache is built
once (timed separately), then the two modes alternate: one warm-up step each, then ``--steps`` timed
steps each (interleaved, so load changes on a shared machine hit both). The last line printed is one
JSON object; ``speedup`` = cached / on-the-fly images per second.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image

from diffusion.data import FaceEmbeddingDataset, StepBatchSampler, step_generator
from diffusion.ema import EMAModel
from diffusion.latent_cache import LatentCache
from embedding.files import save_embeddings
from models.autoencoder.vqgan import VQEncoderInterface
from utils.config import compose, resolve_device
from utils.distributed import DistributedContext

log = logging.getLogger(__name__)


def make_folder(root: Path, n: int, size: int) -> FaceEmbeddingDataset:
    """``n`` random ``size``x``size`` PNGs with random unit 512-d embeddings."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    names = [f"{i:05d}" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    contexts = rng.normal(size=(n, 512)).astype(np.float32)
    save_embeddings(root / "emb.npz", names, contexts / np.linalg.norm(contexts, axis=1, keepdims=True))
    return FaceEmbeddingDataset(root / "images", root / "emb.npz", image_size=size)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and return (and log) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode (after one warm-up step each)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (torch.set_num_threads); 1 avoids the OpenMP oversubscription that makes "
                        "2 threads up to 10x slower on a shared 2-core machine")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = compose("train_config", [f"device={args.device}"])
    size, b = int(cfg.constants.image_size), args.batch_size

    torch.manual_seed(0)
    model = instantiate(cfg.diffusion).to(device)
    encoder = VQEncoderInterface(cfg.autoencoder.ddconfig, cfg.autoencoder.embed_dim).to(device).eval().requires_grad_(False)
    optimizer = instantiate(cfg.training.optimizer)(params=model.parameters())
    ema = EMAModel(model)
    log.info("UNet %d parameters, VQ encoder %d parameters, batch %d at %dx%d on %s",
             sum(p.numel() for p in model.parameters()), sum(p.numel() for p in encoder.parameters()), b, size, size, device)

    tmp = tempfile.TemporaryDirectory()  # the on-the-fly steps read the images from here
    dataset = make_folder(Path(tmp.name), b, size)
    start = time.perf_counter()
    cache = LatentCache.load_or_build(Path(tmp.name) / "cache.pt", dataset, encoder, "bench",
                                      DistributedContext(0, 1, 0, device), batch_size=b)
    cache_build_s = time.perf_counter() - start
    sampler = StepBatchSampler(len(dataset), b, seed=0)

    def train_step(step: int, cached: bool) -> float:
        indices, flips = sampler.global_batch_at(step)
        context = dataset.contexts[indices].to(device)
        if cached:
            x0 = cache.batch(indices, flips).to(device)
        else:
            x = torch.stack([dataset[(i, f)][0] for i, f in zip(indices.tolist(), flips.tolist())]).to(device)
            with torch.no_grad():
                x0 = encoder(x)
        g = step_generator(0, step)
        t = torch.randint(0, model.T, (b,), generator=g).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        loss = model(x0, context=context, t=t, eps=eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss.item()

    times: dict[bool, list[float]] = {False: [], True: []}
    for step in range(args.steps + 1):
        for cached in (False, True):
            start = time.perf_counter()
            train_step(step, cached)
            seconds = time.perf_counter() - start
            log.info("step %d %s: %.2f s", step, "cached" if cached else "on the fly", seconds)
            if step > 0:
                times[cached].append(seconds)
    tmp.cleanup()
    on_the_fly, cached = statistics.median(times[False]), statistics.median(times[True])
    return {
        "device": str(device), "threads": args.threads, "batch_size": b, "image_size": size,
        "on_the_fly_s_per_step": round(on_the_fly, 3), "cached_s_per_step": round(cached, 3),
        "on_the_fly_images_per_s": round(b / on_the_fly, 3), "cached_images_per_s": round(b / cached, 3),
        "cache_build_s": round(cache_build_s, 2), "speedup": round(on_the_fly / cached, 2),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.stdout.write(json.dumps(main()) + "\n")
