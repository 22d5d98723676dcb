"""Seconds of the greedy separability filter (``contexts.separability_threshold``) at the paper's scale.

Run from the project root: ``python benchmarks/separability.py``. Default: 15,000 synthetic-uniform
512-d contexts (``create_sample_identity_contexts.py``'s default set) filtered at cosine 0.15,
chunked (``chunk_size`` 2048, the default); every kept pair must be below the threshold. The
first ``--baseline-contexts`` (3,000) are also filtered one row at a time (``chunk_size`` 1: one
(1, kept) product per row; ~100x slower at 15,000), which must keep the same rows. The last line
printed is one JSON object; ``speedup`` = row-at-a-time seconds / chunked seconds on those rows.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import torch

from contexts.sources import separability_filter, synthetic_uniform

log = logging.getLogger(__name__)


def timed_filter(x: np.ndarray, threshold: float, chunk_size: int) -> tuple[np.ndarray, float]:
    """(kept indices, seconds) of one :func:`separability_filter` call."""
    start = time.perf_counter()
    kept = separability_filter(x, threshold, chunk_size=chunk_size)
    return kept, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=15_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.15)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--baseline-contexts", type=int, default=3_000, help="rows also filtered one at a time")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = synthetic_uniform(args.contexts, args.dim, seed=0).embeddings
    kept, chunked_s = timed_filter(x, args.threshold, args.chunk_size)
    sims = x[kept] @ x[kept].T
    np.fill_diagonal(sims, -1.0)
    if sims.max() >= args.threshold:
        raise RuntimeError(f"kept pair with cosine {sims.max():.4f} >= threshold {args.threshold}")
    subset = x[: args.baseline_contexts]
    kept_chunked, subset_chunked_s = timed_filter(subset, args.threshold, args.chunk_size)
    kept_single, subset_single_s = timed_filter(subset, args.threshold, 1)
    if not np.array_equal(kept_chunked, kept_single):
        raise RuntimeError("the chunked and the row-at-a-time filter kept different rows")
    log.info("kept %d of %d in %.2f s; on %d rows: chunked %.2f s, one row at a time %.2f s", len(kept), len(x),
             chunked_s, len(subset), subset_chunked_s, subset_single_s)
    return {
        "contexts": args.contexts, "dim": args.dim, "threshold": args.threshold, "kept": int(len(kept)),
        "threads": args.threads, "chunked_s": round(chunked_s, 2), "baseline_contexts": len(subset),
        "baseline_chunked_s": round(subset_chunked_s, 3), "baseline_row_at_a_time_s": round(subset_single_s, 2),
        "speedup": round(subset_single_s / subset_chunked_s, 2),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.stdout.write(json.dumps(main()) + "\n")
