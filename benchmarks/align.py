"""Tiles/s of MTCNN alignment batched over tiles (``align.py``) vs one tile at a time, on the CPU.

Run from the project root: ``python benchmarks/align.py``. The tiles are 128x128 crops of
scikit-image's astronaut (a public-domain NASA photo) with a few pixels of jitter, like the
tiles of a sampled identity block. Both ways use the same ``FaceAligner`` settings; each figure
is the median of ``--repeats`` runs after a warm-up. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch
from skimage.data import astronaut

from alignment.aligner import FaceAligner

log = logging.getLogger(__name__)


def face_tiles(n: int) -> list[np.ndarray]:
    """``n`` (128, 128, 3) uint8 tiles around the astronaut's face, shifted by up to 8 px."""
    image = astronaut()
    return [cv2.resize(image[32 + d : 202 + d, 139 - d : 309 - d], (128, 128), interpolation=cv2.INTER_AREA)
            for d in np.linspace(-8, 8, n).astype(int)]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=32)
    parser.add_argument("--min-face-size", type=int, default=20)
    parser.add_argument("--pad", type=float, default=0.0, help="FaceAligner pad (align.pad in the config)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tiles = face_tiles(args.tiles)
    batched = FaceAligner(device="cpu", min_face_size=args.min_face_size, batch_size=args.tiles, pad=args.pad)
    single = FaceAligner(device="cpu", min_face_size=args.min_face_size, batch_size=1, pad=args.pad)
    found = sum(crop is not None for crop in batched.align(tiles))  # also the warm-up of both detectors
    single.align(tiles[:1])
    batched_s = median_seconds(lambda: batched.align(tiles), args.repeats)
    single_s = median_seconds(lambda: [single.align([tile]) for tile in tiles], args.repeats)
    log.info("batched %.2f s, one at a time %.2f s for %d tiles (%d faces)", batched_s, single_s, len(tiles), found)
    return {
        "tiles": len(tiles), "faces_found": found, "min_face_size": args.min_face_size, "pad": args.pad, "threads": args.threads,
        "batched_tiles_per_s": round(len(tiles) / batched_s, 2), "single_tiles_per_s": round(len(tiles) / single_s, 2),
        "speedup": round(single_s / batched_s, 2),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.stdout.write(json.dumps(main()) + "\n")
