"""Images/s of identity sampling with the full-size UNet + VQ-f4 decoder (random weights) on the CPU.

Run from the project root: ``python benchmarks/sample.py``. Two ways to make 50 images of one identity:

* (a) the original: DDPM, 1,000 steps, one identity of 50 images per batch, global-RNG noise;
* (b) ours: DDIM, 50 steps, packed batches (``batch_size`` images of any identities, one seeded
  generator per image, fixed micro-batches), as ``sample.py`` does.

A full run would take hours on a CPU, so each way times ``--timed-steps`` denoising steps after one
warm-up step, and the decoder on ``--decode-images`` latents; then
``images/s = batch / (steps x step time + batch x decode time per image)``. The last line printed is
one JSON object with both figures and their ratio ``speedup``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion.generation import MicroBatched, image_seed
from diffusion.samplers import DDIMSampler, DDPMSampler, guided_eps, per_sample_noise
from models.autoencoder.vqgan import VQDecoderInterface
from utils.config import CONFIG_DIR, compose

log = logging.getLogger(__name__)


def time_steps(
    eps_model: torch.nn.Module,
    sampler: DDPMSampler | DDIMSampler,
    context: torch.Tensor,
    generators: list[torch.Generator] | None,
    n_steps: int,
) -> float:
    """Median seconds of one reverse step (eps model + update + noise) over ``n_steps`` after one warm-up.

    Args:
        context: (B, 512) identity contexts; x_t is (B, 3, 32, 32).
        generators: one per image (ours) or None (the original's global RNG).
    """
    size = (3, 32, 32)
    x_t = per_sample_noise(generators, size, "cpu") if generators else torch.randn(len(context), *size)
    times = []
    for t in sampler.timesteps[: n_steps + 1]:
        start = time.perf_counter()
        with torch.no_grad():
            eps = guided_eps(eps_model, x_t, torch.full((len(x_t),), t, dtype=torch.long), context)
        noise = None
        if sampler.needs_noise(t):
            noise = per_sample_noise(generators, size, "cpu") if generators else torch.randn_like(x_t)
        x_t = sampler.step(eps, t, x_t, noise)
        times.append(time.perf_counter() - start)
    steps = sorted(times[1:])
    return steps[len(steps) // 2]


def time_decode(decoder: VQDecoderInterface, n_images: int) -> float:
    """Seconds per image of decoding (with quantisation) a batch of ``n_images`` 3x32x32 latents, after a warm-up."""
    h = torch.randn(n_images, 3, 32, 32)
    with torch.no_grad():
        decoder(h[:1])
        start = time.perf_counter()
        decoder(h)
    return (time.perf_counter() - start) / n_images


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--timed-steps", type=int, default=2, help="denoising steps timed per way (after a warm-up)")
    parser.add_argument("--decode-images", type=int, default=2, help="latents decoded to time the decoder")
    parser.add_argument("--batch-size", type=int, default=50, help="ours: images per packed batch (= micro-batch)")
    parser.add_argument("--ddim-steps", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ddpm = instantiate(compose("train_config").diffusion).eval()  # full-size UNet, unet_cond_ca_cpd25
    ddconfig = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "autoencoder" / "vq_f4.yaml").ddconfig)
    decoder = VQDecoderInterface(ddconfig).eval()
    decode_s = time_decode(decoder, args.decode_images)
    log.info("decode: %.2f s per image", decode_s)

    n_original = 50
    context = torch.nn.functional.normalize(torch.randn(1, 512), dim=1)
    step_a = time_steps(ddpm.eps_model, DDPMSampler.from_model(ddpm), context.expand(n_original, -1), None,
                        args.timed_steps)
    log.info("(a) DDPM step, batch %d: %.2f s", n_original, step_a)

    b = args.batch_size
    contexts = torch.nn.functional.normalize(torch.randn(b, 512), dim=1)  # images of several identities
    generators = [torch.Generator().manual_seed(image_seed(42, str(i // 50), i % 50)) for i in range(b)]
    step_b = time_steps(MicroBatched(ddpm.eps_model, b), DDIMSampler.from_model(ddpm, args.ddim_steps), contexts,
                        generators, args.timed_steps)
    log.info("(b) DDIM step, packed batch %d: %.2f s", b, step_b)

    original = n_original / (ddpm.T * step_a + n_original * decode_s)
    ours = b / (args.ddim_steps * step_b + b * decode_s)
    return {
        "threads": args.threads, "decode_s_per_image": round(decode_s, 3),
        "original_ddpm1000_b50_step_s": round(step_a, 3), "original_images_per_s": round(original, 5),
        "ours_ddim_steps": args.ddim_steps, "ours_batch": b, "ours_step_s": round(step_b, 3),
        "ours_images_per_s": round(ours, 5), "speedup": round(ours / original, 2),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.stdout.write(json.dumps(main()) + "\n")
