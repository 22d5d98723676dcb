"""Time and peak memory of the whole sample-filter step on 300,000 identities x 50 images x 512-d.

Run from the project root: ``python benchmarks/filters.py`` (``--quick``: 20,000 identities). The
embeddings (31 GB in float32 at full size, more than the machine's memory) are generated identity
chunk by identity chunk, seeded, and streamed through :func:`dataset_building.filters.run_filters`
exactly as ``filter_identities.py`` streams an ``encode.py`` file; the report is then written.

The set is clustered so that each filter has something to drop: identity i has a random unit centre
c_i (from its own seeded generator), images c_i + s_i g / sqrt(D) with g standard normal and a
per-identity spread s_i = 0.73 exp(0.25 u_i), u_i standard normal (pairwise cosine about 1 / (1 + s_i^2):
0.65 typical, below 0.45 for about 5 % of identities); 2 % of the images are replaced by random
directions (outliers); 2 % of the identities take the centre of a random earlier identity plus
noise (centre cosine about 0.8: look-alikes). Filters: max_z=3, min_consistency=0.45,
max_centre_similarity=0.6 (most consistent first), then exactly 0.9 x identities x 45 images.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from dataset_building.filters import FilterSettings, run_filters
from embedding.identity_chunks import IdentityChunk

log = logging.getLogger(__name__)


def identity_centre(seed: int, identity: int, dim: int) -> np.ndarray:
    """The unit centre (dim,) of one identity, from its own generator (so look-alikes can regenerate it)."""
    c = np.random.default_rng([seed, 0, identity]).standard_normal(dim)
    return c / np.linalg.norm(c)


def generate(n_ids: int, n_images: int, dim: int, per_chunk: int, seed: int, clock: dict[str, float]) -> Iterator[IdentityChunk]:
    """Clustered identity chunks (see the module docstring); adds the generation time to ``clock["generate"]``."""
    for start in range(0, n_ids, per_chunk):
        began = time.perf_counter()
        ids = np.arange(start, min(start + per_chunk, n_ids))
        rng = np.random.default_rng([seed, 1, start])
        lookalike = rng.random(len(ids)) < 0.02
        source = np.where(lookalike & (ids > 0), rng.integers(0, np.maximum(ids, 1)), ids)
        centres = np.stack([identity_centre(seed, int(i), dim) for i in source])  # (I, D)
        copy_noise = rng.standard_normal((len(ids), dim)) * 0.75 / np.sqrt(dim)
        centres = np.where((source != ids)[:, None], centres + copy_noise, centres)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        spread = 0.73 * np.exp(0.25 * rng.standard_normal(len(ids)))  # (I,)
        noise = torch.Generator().manual_seed(seed * 1_000_003 + start)
        x = torch.randn((len(ids), n_images, dim), generator=noise)  # torch draws normals faster than numpy
        x.mul_(torch.from_numpy((spread / np.sqrt(dim)).astype(np.float32))[:, None, None])
        x.add_(torch.from_numpy(centres.astype(np.float32))[:, None, :])
        outlier = torch.from_numpy(rng.random((len(ids), n_images)) < 0.02)
        x[outlier] = torch.randn((int(outlier.sum()), dim), generator=noise)
        x = torch.nn.functional.normalize(x, dim=2).numpy()
        chunk = IdentityChunk([f"{i:06d}" for i in ids], np.full(len(ids), n_images), x.reshape(-1, dim),
                              [str(k) for k in range(n_images)] * len(ids))
        clock["generate"] += time.perf_counter() - began
        yield chunk
    clock["screened_at"] = time.perf_counter()


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and return its JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 identities instead of 300,000")
    parser.add_argument("--identities", type=int, default=None, help="override the number of identities")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-chunk", type=int, default=500, help="identities per streamed chunk")
    parser.add_argument("--screen", choices=["float32", "bfloat16"], default="float32",
                        help="products of the separability filter (same result; bfloat16 re-checks pairs near the threshold)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    n_ids = args.identities or (20_000 if args.quick else 300_000)
    settings = FilterSettings(max_z=3.0, min_consistency=0.45, max_centre_similarity=0.6,
                              identities=int(0.9 * n_ids), images_per_identity=45)
    clock = {"generate": 0.0}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    report = run_filters(generate(n_ids, args.images, args.dim, args.per_chunk, args.seed, clock), settings,
                         screen=args.screen)
    filtered = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = report.save(Path(tmp) / "report.json")
        report_mb = path.stat().st_size / 2**20
    end = time.perf_counter()
    record = {
        "identities": n_ids, "images_per_identity": args.images, "dim": args.dim,
        "input_gb_float32": round(n_ids * args.images * args.dim * 4 / 1e9, 1),
        "seconds_total": round(end - start, 1),
        "seconds_generate": round(clock["generate"], 1),
        "seconds_image_and_identity_filters": round(clock["screened_at"] - start - clock["generate"], 1),
        "seconds_separability_and_cut": round(filtered - clock["screened_at"], 1),
        "seconds_write_report": round(end - filtered, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "report_mib": round(report_mb, 1),
        "counts": report.counts,
        "screen": args.screen, "threads": args.threads, "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2), "cpu": _cpu_name(),
    }
    print(json.dumps(record))
    return record


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


if __name__ == "__main__":
    main()
