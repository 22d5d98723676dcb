"""Score a face-recognition backbone on insightface verification ``.bin`` files (the paper's table).

Library part (also used by training): flip-sum embeddings, per-benchmark 10-fold accuracy by
insightface's rule (``eval/verification.py``, the papers' protocol; ``--kfold-rule midpoint`` for
the exact-midpoint rule) and our TAR@FAR=1e-3 on all pairs, the table. Command line::

    python -m face_recognition_training.evaluate --checkpoint outputs/fr/.../backbone.pth \
        --bin-dir data/fr_benchmarks --arch iresnet50 [--device auto] [--output results.json]

It scores every benchmark of ``BENCHMARKS`` whose ``<name>.bin`` is in ``--bin-dir`` and logs
the table (LFW, AgeDB-30, CALFW, CFP-FP, CPLFW, average); ``--output`` also writes the numbers
as JSON and the table as Markdown beside it.
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from evaluation.verification import KFOLD_RULES, flip_sum_embeddings, kfold_accuracy, tar_at_far
from face_recognition_training.bin_reader import read_bin
from models.iresnet import ARCHITECTURES, load_iresnet
from utils.atomic import write_json_atomic, write_text_atomic
from utils.config import resolve_device

log = logging.getLogger(__name__)

#: File stem -> column title, in the paper's column order.
BENCHMARKS: dict[str, str] = {
    "lfw": "LFW",
    "agedb_30": "AgeDB-30",
    "calfw": "CALFW",
    "cfp_fp": "CFP-FP",
    "cplfw": "CPLFW",
}


@dataclass
class VerificationSet:
    """One benchmark: ``images`` (2N, 112, 112, 3) uint8 RGB with pairs at rows (2i, 2i+1), ``is_same`` (N,)."""

    name: str
    images: np.ndarray
    is_same: np.ndarray


def load_verification_sets(bin_dir: str | os.PathLike, names: Sequence[str] = tuple(BENCHMARKS)) -> list[VerificationSet]:
    """Read ``<bin_dir>/<name>.bin`` for each name that is present (missing ones are logged and skipped)."""
    bin_dir = Path(bin_dir)
    if not bin_dir.is_dir():
        raise FileNotFoundError(f"verification folder {bin_dir} does not exist (expected {', '.join(names)} .bin files)")
    sets = []
    for name in names:
        path = bin_dir / f"{name}.bin"
        if not path.is_file():
            log.warning("%s not found; skipping %s", path, name)
            continue
        images, is_same = read_bin(path)
        sets.append(VerificationSet(name, images, is_same))
        log.info("loaded %s: %d pairs", path, len(is_same))
    return sets


@torch.no_grad()
def embed_images(
    backbone: nn.Module,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Flip-sum embeddings: ``normalize(f(x) + f(flip(x)))``, summed and normalised in float64 as insightface does.

    Args:
        backbone: maps (B, 3, 112, 112) in [-1, 1] to (B, D); evaluated in eval mode (mode restored after).
        images: (N, H, W, 3) uint8 RGB.
        device: where the backbone lives.
        batch_size: images per forward.
        amp: autocast (float16 on CUDA, bfloat16 on CPU).

    Returns:
        (N, D) float64, L2-normalised rows.
    """
    was_training = backbone.training
    backbone.eval()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    features, flipped = [], []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="embed", disable=not progress, leave=False):
        x = torch.from_numpy(images[start:start + batch_size]).to(device).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        x = x.float().div_(127.5).sub_(1.0)  # [-1, 1]
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=amp):
            features.append(backbone(x).float().cpu())  # (B, D)
            flipped.append(backbone(torch.flip(x, dims=[3])).float().cpu())
    backbone.train(was_training)
    if not features:
        raise ValueError("embed_images got no images")
    return flip_sum_embeddings(torch.cat(features).numpy(), torch.cat(flipped).numpy())


def score_set(
    embeddings: np.ndarray, is_same: np.ndarray, n_folds: int = 10, far: float = 1e-3, rule: str = "insightface"
) -> dict:
    """Metrics of one benchmark from its (2N, D) normalised embeddings (pairs at rows 2i, 2i+1) and (N,) labels.

    ``accuracy_mean`` / ``accuracy_std``: k-fold accuracy in percent by ``rule``
    (:data:`evaluation.verification.KFOLD_RULES`), named in ``kfold_rule``; ``tar_at_far``: our TAR at
    FAR ``far`` on all pairs (:func:`evaluation.verification.tar_at_far`, not insightface's VAL).
    """
    folds = kfold_accuracy(embeddings[0::2], embeddings[1::2], is_same, n_folds=n_folds, rule=rule)
    similarities = np.einsum("ij,ij->i", embeddings[0::2], embeddings[1::2])  # (N,) cosine
    return {
        "accuracy_mean": folds["accuracy_mean"],
        "accuracy_std": folds["accuracy_std"],
        "kfold_rule": rule,
        "tar_at_far": tar_at_far(similarities, is_same, far=far),
    }


def evaluate_backbone(
    backbone: nn.Module,
    sets: Sequence[VerificationSet],
    device: torch.device,
    batch_size: int = 256,
    amp: bool = False,
    progress: bool = False,
    rule: str = "insightface",
) -> dict[str, dict]:
    """``{name: {"accuracy_mean", "accuracy_std", "kfold_rule", "tar_at_far"}}`` for each verification set."""
    return {
        s.name: score_set(embed_images(backbone, s.images, device, batch_size, amp, progress), s.is_same, rule=rule)
        for s in sets
    }


def mean_accuracy(results: dict[str, dict]) -> float:
    """Mean of the benchmarks' ``accuracy_mean`` (the paper's "Avg" column)."""
    if not results:
        raise ValueError("mean_accuracy needs at least one benchmark result")
    return float(np.mean([r["accuracy_mean"] for r in results.values()]))


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: one column per benchmark (paper order, others after) and the average; rows name the k-fold rule."""
    names = [n for n in BENCHMARKS if n in results] + [n for n in results if n not in BENCHMARKS]
    header = [BENCHMARKS.get(n, n) for n in names] + ["Avg"]
    accuracy = [f"{results[n]['accuracy_mean']:.2f} ± {results[n]['accuracy_std']:.2f}" for n in names]
    tar = [f"{results[n]['tar_at_far']:.2f}" for n in names]
    rules = sorted({results[n]["kfold_rule"] for n in names})
    rows = [
        "| metric | " + " | ".join(header) + " |",
        "|---" * (len(header) + 1) + "|",
        f"| accuracy (%, {'/'.join(rules)} rule) | " + " | ".join(accuracy) + f" | {mean_accuracy(results):.2f} |",
        "| TAR@FAR=1e-3 (%, all pairs) | " + " | ".join(tar)
        + f" | {np.mean([results[n]['tar_at_far'] for n in names]):.2f} |",
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Command-line entry: load a backbone state dict, score the ``.bin`` files, log/write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="backbone state dict (ours: backbone.pth; ElasticFace .pth)")
    parser.add_argument("--bin-dir", required=True, help="folder with lfw.bin, agedb_30.bin, calfw.bin, cfp_fp.bin, cplfw.bin")
    parser.add_argument("--arch", default="iresnet100", choices=sorted(ARCHITECTURES))
    parser.add_argument("--num-features", type=int, default=512)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--amp", action="store_true", help="autocast the backbone")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), help="file stems to score")
    parser.add_argument("--kfold-rule", default="insightface", choices=sorted(KFOLD_RULES),
                        help="how each fold's threshold is chosen (insightface: the papers' protocol)")
    parser.add_argument("--output", help="write the numbers here as JSON (and the table as .md beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = resolve_device(args.device)
    backbone = load_iresnet(args.checkpoint, arch=args.arch, num_features=args.num_features, map_location=device)
    results = {}
    for name in args.benchmarks:  # one set in memory at a time: a decoded .bin is ~0.45 GB
        for vset in load_verification_sets(args.bin_dir, [name]):
            results.update(evaluate_backbone(backbone, [vset], device, args.batch_size, args.amp, progress=True,
                                             rule=args.kfold_rule))
            log.info("%s: %.2f ± %.2f", name, results[name]["accuracy_mean"], results[name]["accuracy_std"])
    if not results:
        raise FileNotFoundError(f"none of {', '.join(n + '.bin' for n in args.benchmarks)} is in {args.bin_dir}")
    table = format_table(results)
    log.info("%s\n%s", args.checkpoint, table)
    if args.output:
        out = Path(args.output)
        summary = {"checkpoint": str(args.checkpoint), "arch": args.arch, "kfold_rule": args.kfold_rule,
                   "results": results, "average_accuracy": mean_accuracy(results)}
        write_json_atomic(out, summary)
        write_text_atomic(out.with_suffix(".md"), table + "\n")
        log.info("wrote %s and %s", out, out.with_suffix(".md"))
    return results


if __name__ == "__main__":
    main()
