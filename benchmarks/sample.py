"""Images/s of identity sampling with the full-size UNet + VQ-f4 decoder (random weights), the original's way vs ours.

Run from the project root: ``python benchmarks/sample.py`` (CPU) or ``python benchmarks/sample.py --device cuda
--amp bfloat16 --batch-size 256``. Two ways to make images of synthetic identities:

* (a) the original: DDPM, 1,000 steps, one identity of 50 images per batch, global-RNG noise, fp32;
* (b) ours, with the setting given on the command line (default: ``sample.py``'s defaults, DPM-Solver++(2M),
  15 trailing steps, guidance 3 with Far-Neg negative contexts at 0.5, bf16 autocast for the UNet and the
  decoder): packed batches of ``--batch-size`` images of any identities, one seeded generator per image,
  fixed micro-batches, as ``sample.py`` does. A guidance scale other than 1 runs
  the empty-context branch in the same call (2 rows per image); negative guidance adds a third.

A full run takes hours on a CPU, so each way times ``--timed-steps`` denoising steps after one warm-up step, and
the decoder on ``--decode-images`` latents; then ``images/s = batch / (steps x step time + batch x decode time)``.
Each step costs the same whatever the timestep, so this is the whole run's rate. The last line printed is one
JSON object with both rates, their ratio ``speedup`` and the projected hours for the paper's 10,050 x 50 images.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion.generation import MicroBatched, image_seed
from diffusion.samplers import Sampler, guided_eps, per_sample_noise
from models.autoencoder.vqgan import VQDecoderInterface
from utils.config import CONFIG_DIR, compose, resolve_device

log = logging.getLogger(__name__)

PAPER_IMAGES = 10_050 * 50
AMP = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _timer(device: torch.device) -> Callable[[], float]:
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return now


def time_steps(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sampler: Sampler, batch: int,
               generators: list[torch.Generator] | None, n_steps: int, device: torch.device) -> float:
    """Median seconds of one reverse step (eps model + update + noise) over ``n_steps`` after one warm-up.

    ``x_t`` is (batch, 3, 32, 32); ``generators``: one per image (ours) or None (the original's global RNG).
    """
    size, now = (3, 32, 32), _timer(device)
    x_t = per_sample_noise(generators, size, device) if generators else torch.randn(batch, *size, device=device)
    sampler.reset()
    times = []
    for t in sampler.timesteps[: n_steps + 1]:
        start = now()
        with torch.no_grad():
            eps = eps_fn(x_t, torch.full((batch,), t, dtype=torch.long, device=device)).to(x_t.dtype)
        noise = None
        if sampler.needs_noise(t):
            noise = per_sample_noise(generators, size, device) if generators else torch.randn_like(x_t)
        x_t = sampler.step(eps, t, x_t, noise)
        times.append(now() - start)
    steps = sorted(times[1:])
    return steps[len(steps) // 2]


def time_decode(decoder: VQDecoderInterface, n_images: int, device: torch.device, amp: torch.dtype | None) -> float:
    """Seconds per image of decoding (with quantisation) ``n_images`` 3x32x32 latents at once, after a warm-up."""
    h, now = torch.randn(n_images, 3, 32, 32, device=device), _timer(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        decoder(h[:1])
        start = now()
        decoder(h)
        return (now() - start) / n_images


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark and return the results."""
    defaults = compose("sample_config").sampling  # sample.py's defaults: the setting measured by default
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--timed-steps", type=int, default=2, help="denoising steps timed per way (after a warm-up)")
    parser.add_argument("--decode-images", type=int, default=2, help="latents decoded to time the decoder")
    parser.add_argument("--batch-size", type=int, default=50, help="ours: images per packed batch (= micro-batch)")
    parser.add_argument("--sampler", default=defaults.sampler, choices=("ddim", "dpmpp_2m", "ddpm"))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--spacing", default=defaults.timestep_spacing, choices=("linspace", "leading", "trailing"))
    parser.add_argument("--guidance-scale", type=float, default=defaults.guidance_scale)
    parser.add_argument("--negative-scale", type=float,
                        default=defaults.negative.scale if defaults.negative.mode is not None else 0.0)
    amp = str(defaults.amp).lower() if defaults.amp is not None else "none"
    parser.add_argument("--amp", default=amp, choices=sorted(AMP), help="ours: UNet autocast dtype")
    parser.add_argument("--decode-amp", default=amp, choices=sorted(AMP), help="ours: decoder autocast dtype")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ddpm = instantiate(compose("train_config").diffusion).to(device).eval()  # full-size UNet, unet_cond_ca_cpd25
    ddconfig = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "autoencoder" / "vq_f4.yaml").ddconfig)
    decoder = VQDecoderInterface(ddconfig).to(device).eval()
    decode_original = time_decode(decoder, args.decode_images, device, None)
    amp, decode_amp = AMP[args.amp], AMP[args.decode_amp]
    decode_ours = decode_original if decode_amp is None else time_decode(decoder, args.decode_images, device, decode_amp)
    log.info("decode: %.4f s per image fp32, %.4f s with %s", decode_original, decode_ours, args.decode_amp)

    n_original = 50
    context = torch.nn.functional.normalize(torch.randn(1, 512, device=device), dim=1).expand(n_original, -1)
    step_a = time_steps(lambda x, t: ddpm.eps_model(x, t, context), ddpm.sampler("ddpm"), n_original, None,
                        args.timed_steps, device)
    log.info("(a) DDPM step, batch %d: %.4f s", n_original, step_a)

    b = args.batch_size
    contexts = torch.nn.functional.normalize(torch.randn(b, 512, device=device), dim=1)  # images of many identities
    negatives = contexts.roll(1, dims=0) if args.negative_scale else None
    generators = [torch.Generator().manual_seed(image_seed(42, str(i // 50), i % 50)) for i in range(b)]
    eps_model = MicroBatched(ddpm.eps_model, b)

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return guided_eps(eps_model, x_t, t, contexts, args.guidance_scale, negatives, args.negative_scale)

    sampler = ddpm.sampler(args.sampler, args.steps, timestep_spacing=args.spacing)
    step_b = time_steps(eps_fn, sampler, b, generators, args.timed_steps, device)
    n_steps = len(sampler.timesteps)
    log.info("(b) %s %d steps, packed batch %d: %.4f s per step", args.sampler, n_steps, b, step_b)

    original = n_original / (ddpm.T * step_a + n_original * decode_original)
    ours = b / (n_steps * step_b + b * decode_ours)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": name, "threads": args.threads,
        "setting": {"sampler": args.sampler, "steps": n_steps, "spacing": args.spacing, "batch": b,
                    "guidance_scale": args.guidance_scale, "negative_scale": args.negative_scale,
                    "amp": args.amp, "decode_amp": args.decode_amp},
        "decode_s_per_image_fp32": round(decode_original, 5), "decode_s_per_image_ours": round(decode_ours, 5),
        "original_ddpm1000_b50_step_s": round(step_a, 5), "original_images_per_s": round(original, 5),
        "ours_step_s": round(step_b, 5), "ours_images_per_s": round(ours, 5),
        "original_hours_10050x50": round(PAPER_IMAGES / original / 3600, 2),
        "ours_hours_10050x50": round(PAPER_IMAGES / ours / 3600, 2),
        "speedup": round(ours / original, 2),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.stdout.write(json.dumps(main()) + "\n")
