"""Time and peak memory of ``evaluate.evaluate_sets`` at the paper's scale, on random embeddings.

Run from the project root: ``python benchmarks/evaluate.py``. Default: 10,000 identities x 50
images x 512-d (500,000 embeddings), clustered around random identity centres; 10,000,000 seeded
impostor pairs; leakage against 70,000 random "real" embeddings (the size of FFHQ). Everything
evaluate.py computes is run, including the report and the PNG plots (in a temporary folder).
Peak memory is the process's maximum resident set size. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time

import numpy as np

from embedding.files import EmbeddingSet
from evaluation.report import evaluate_sets

log = logging.getLogger(__name__)


def make_set(n_ids: int, per_id: int, dim: int, spread: float, seed: int) -> EmbeddingSet:
    """(n_ids * per_id, dim) float32 embeddings: identity centre + ``spread`` x Gaussian noise, with labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    embeddings = rng.standard_normal((n_ids * per_id, dim), dtype=np.float32)
    embeddings *= spread
    labels = np.repeat(np.arange(n_ids, dtype=np.int64), per_id)
    for start in range(0, len(labels), 1 << 16):  # add the centres in chunks: no second (N, D) copy
        embeddings[start : start + (1 << 16)] += centres[labels[start : start + (1 << 16)]]
    names = [f"{i}/{k}" for i in range(n_ids) for k in range(per_id)]
    return EmbeddingSet(names, embeddings, labels)


def peak_rss_gib() -> float:
    """Maximum resident set size of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and return (and print as the last line) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=50, help="images per identity")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--spread", type=float, default=2.5, help="noise std relative to the identity centre (2.5: EER ~5%%)"
    )
    parser.add_argument("--impostor-pairs", type=int, default=10_000_000)
    parser.add_argument("--real", type=int, default=70_000, help="real embeddings for the leakage search")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    start = time.perf_counter()
    synthetic = make_set(args.identities, args.images, args.dim, args.spread, seed=0)
    real = EmbeddingSet(
        [f"real{k}" for k in range(args.real)],
        np.random.default_rng(1).standard_normal((args.real, args.dim), dtype=np.float32),
    )
    data_s = time.perf_counter() - start
    log.info("data: %d x %d synthetic, %d real in %.1f s", len(synthetic), args.dim, args.real, data_s)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        report = evaluate_sets(synthetic, out_dir, real, impostor_pairs=args.impostor_pairs, seed=0)
    evaluate_s = time.perf_counter() - start
    v = report["verification"]
    result = {
        "benchmark": "evaluate",
        "identities": args.identities,
        "images_per_identity": args.images,
        "dim": args.dim,
        "embeddings": len(synthetic),
        "genuine_pairs": v["n_genuine"],
        "impostor_pairs": v["n_impostor"],
        "real_embeddings": args.real,
        "data_s": round(data_s, 1),
        "evaluate_s": round(evaluate_s, 1),
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "eer_percent": round(100 * v["eer"], 3),
        "uniqueness": report["identities"]["uniqueness"],
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
