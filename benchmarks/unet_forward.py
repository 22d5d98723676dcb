"""Forward-pass throughput of the full-size IDiff-Face ``ConditionalUNet`` (random weights).

Run from the project root: ``python benchmarks/unet_forward.py``. Times eval-mode forwards at
batch 8 on a 3x32x32 latent with identity contexts: float32 on CPU with 2 threads, and on CUDA
(when available) float32 plus fp16 and bf16 autocast. Each figure is the median of 3 timed runs
after one warm-up run. The last line printed is one JSON object with the results.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time

import torch
from hydra.utils import instantiate

from models.diffusion.unet import ConditionalUNet
from utils.config import compose

log = logging.getLogger(__name__)


def build_model(model_config: str) -> ConditionalUNet:
    """Instantiate ``configs/model/<model_config>.yaml`` through the training root config."""
    return instantiate(compose("train_config", [f"model={model_config}"]).model)


def time_forward(
    model: ConditionalUNet,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    autocast_dtype: torch.dtype | None = None,
    repeats: int = 3,
) -> float:
    """Median seconds of ``repeats`` forwards after one warm-up (synchronising on CUDA)."""
    device = inputs[0].device
    times = []
    for i in range(repeats + 1):
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_inputs(batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_t: (B, 3, 32, 32)``, ``t: (B,)`` int64, ``context: (B, 512)`` L2-normalised."""
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(batch_size, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (batch_size,), generator=g)
    context = torch.nn.functional.normalize(torch.randn(batch_size, 512, generator=g), dim=1)
    return x_t.to(device), t.to(device), context.to(device)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and return (and log) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet_cond_ca_cpd25", help="config name in configs/model/")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA timings")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build_model(args.model).eval()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %d parameters", args.model, n_params)

    results: dict[str, float] = {"batch_size": args.batch_size, "n_params": n_params}
    cpu_inputs = make_inputs(args.batch_size, torch.device("cpu"))
    seconds = time_forward(model, cpu_inputs)
    results["cpu_threads"] = args.threads
    results["cpu_fp32_s_per_batch"] = round(seconds, 4)
    results["cpu_fp32_images_per_s"] = round(args.batch_size / seconds, 2)
    results["cpu_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    log.info("cpu fp32: %.3f s per batch", seconds)

    if torch.cuda.is_available() and not args.no_cuda:
        device = torch.device("cuda")
        model = model.to(device)
        cuda_inputs = make_inputs(args.batch_size, device)
        for name, dtype in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            seconds = time_forward(model, cuda_inputs, autocast_dtype=dtype)
            results[f"cuda_{name}_images_per_s"] = round(args.batch_size / seconds, 2)
            log.info("cuda %s: %.4f s per batch", name, seconds)
        results["cuda_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        results["cuda_device"] = torch.cuda.get_device_name(device)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.stdout.write(json.dumps(main()) + "\n")
