"""Training throughput of the FR recipe: iResNet-50 + CosFace (10,000 classes), SGD, 112x112, batch 64.

Run from the project root: ``python benchmarks/fr_train.py``. Builds backbone and head from
``configs/fr_train_config.yaml`` and times full training steps (forward, cross-entropy,
backward, gradient clipping, SGD step) on random images: float32 on the CPU, and on CUDA
(when available) float32 and float16 autocast with a GradScaler, as training uses. Each figure
is the median of ``--steps`` timed steps after one warm-up step. The last line printed is one
JSON object with the results.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from face_recognition_training.train import FRModel
from utils.config import compose

log = logging.getLogger(__name__)


def build(arch: str, num_classes: int, device: torch.device) -> tuple[FRModel, torch.optim.Optimizer]:
    """Backbone ``fr/backbone=<arch>`` + the configured head and SGD, on ``device``."""
    cfg = compose("fr_train_config", [f"fr/backbone={arch}"])
    backbone = instantiate(cfg.fr.backbone.net)
    head = instantiate(cfg.fr.head.loss, embedding_size=cfg.fr.backbone.net.num_features, num_classes=num_classes)
    model = FRModel(backbone, head).to(device).train()
    optimizer = instantiate(cfg.optimizer)(model.parameters(), lr=0.1 * 64 / 512)
    return model, optimizer


def time_steps(model: FRModel, optimizer: torch.optim.Optimizer, batch_size: int, num_classes: int,
               device: torch.device, amp: bool, steps: int) -> float:
    """Median seconds per training step over ``steps`` steps after one warm-up (synchronising on CUDA)."""
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(batch_size, 3, 112, 112, generator=g) * 2 - 1).to(device)  # (B, 3, 112, 112)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)  # (B,)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    times = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images, labels)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.backbone.parameters(), 5.0)
        torch.nn.utils.clip_grad_norm_(model.head.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and return (and log) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="iresnet50", help="config name in configs/fr/backbone/")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=10_000)
    parser.add_argument("--cpu-steps", type=int, default=2, help="timed CPU steps (one iResNet-50 step is ~10-30 s)")
    parser.add_argument("--cuda-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA timings")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU timing")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    results: dict = {"benchmark": "fr_train", "arch": args.arch, "batch_size": args.batch_size,
                     "num_classes": args.num_classes, "image_size": 112}
    runs = [] if args.no_cpu else [("cpu_fp32", torch.device("cpu"), False, args.cpu_steps)]
    if torch.cuda.is_available() and not args.no_cuda:
        runs += [("cuda_fp32", torch.device("cuda"), False, args.cuda_steps),
                 ("cuda_amp_fp16", torch.device("cuda"), True, args.cuda_steps)]
        results["cuda_device"] = torch.cuda.get_device_name(0)
    results["cpu_threads"] = args.threads
    for name, device, amp, steps in runs:
        torch.manual_seed(0)
        model, optimizer = build(args.arch, args.num_classes, device)
        seconds = time_steps(model, optimizer, args.batch_size, args.num_classes, device, amp, steps)
        results[f"{name}_s_per_step"] = round(seconds, 4)
        results[f"{name}_images_per_s"] = round(args.batch_size / seconds, 2)
        log.info("%s: %.3f s per step, %.1f images/s", name, seconds, args.batch_size / seconds)
        if device.type == "cuda":
            results["cuda_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        del model, optimizer
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.stdout.write(json.dumps(main()) + "\n")
