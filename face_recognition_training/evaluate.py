"""Score a face-recognition backbone on insightface verification ``.bin`` files (the paper's table).

Library part (also used by training): flip-sum embeddings, per-benchmark 10-fold accuracy by
insightface's rule (``eval/verification.py``, the papers' protocol; ``eval.kfold_rule=midpoint`` for
the exact-midpoint rule) and our TAR@FAR=1e-3 on all pairs, the table. :func:`evaluate_from_config`
is ``evaluate_fr.py`` (``configs/evaluate_fr_config.yaml``)::

    python evaluate_fr.py evaluate_fr.checkpoint=outputs/fr/.../backbone.pth fr/backbone=iresnet50 \
        eval.bin_dir=data/fr_benchmarks [device=cpu] [evaluate_fr.output=results.json]

It scores every benchmark of ``eval.benchmarks`` whose ``<name>.bin`` is in ``eval.bin_dir`` and logs
the table (LFW, AgeDB-30, CALFW, CFP-FP, CPLFW, average); ``evaluate_fr.output`` also writes the
numbers as JSON and the table as Markdown beside it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from evaluation.verification import KFOLD_RULES, flip_sum_embeddings, kfold_accuracy, tar_at_far
from face_recognition_training.bin_reader import read_bin
from models.iresnet import load_iresnet
from utils.atomic import write_json_atomic, write_text_atomic
from utils.config import resolve_device
from utils.settings import Choice, Number, check_settings

log = logging.getLogger(__name__)

#: File stem -> column title, in the paper's column order.
BENCHMARKS: dict[str, str] = {
    "lfw": "LFW",
    "agedb_30": "AgeDB-30",
    "calfw": "CALFW",
    "cfp_fp": "CFP-FP",
    "cplfw": "CPLFW",
}

#: Start-up checks of the ``eval`` section (``configs/fr/eval/default.yaml``), shared with FR training.
EVAL_SETTINGS = (Number("eval.batch_size", low=1, high=65_536, integer=True), Choice("eval.kfold_rule", KFOLD_RULES))
#: What ``evaluate_fr.py`` checks before any work.
SETTINGS = (
    *EVAL_SETTINGS,
    Number("fr.backbone.net.num_features", low=1, high=8192, integer=True),
    Choice("evaluate_fr.amp", (True, False)),
)


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


def evaluate_from_config(cfg: DictConfig) -> dict[str, dict]:
    """``evaluate_fr.py``: load ``cfg.evaluate_fr.checkpoint`` (``cfg.fr.backbone``), score ``cfg.eval``, log/write the table."""
    check_settings(cfg, SETTINGS)
    e, bin_dir = cfg.evaluate_fr, cfg.eval.bin_dir
    if not bin_dir:
        raise ValueError(f"eval.bin_dir is {bin_dir!r}; set it to the folder of the .bin files "
                         f"({', '.join(cfg.eval.benchmarks)})")
    device = resolve_device(cfg.device)
    arch = str(cfg.fr.backbone.name)
    backbone = load_iresnet(e.checkpoint, arch=arch, num_features=int(cfg.fr.backbone.net.num_features),
                            map_location=device)
    results = {}
    for name in cfg.eval.benchmarks:  # one set in memory at a time: a decoded .bin is ~0.45 GB
        for vset in load_verification_sets(bin_dir, [name]):
            results.update(evaluate_backbone(backbone, [vset], device, int(cfg.eval.batch_size), bool(e.amp),
                                             progress=True, rule=str(cfg.eval.kfold_rule)))
            log.info("%s: %.2f ± %.2f", name, results[name]["accuracy_mean"], results[name]["accuracy_std"])
    if not results:
        raise FileNotFoundError(f"none of {', '.join(n + '.bin' for n in cfg.eval.benchmarks)} is in eval.bin_dir={bin_dir}")
    table = format_table(results)
    log.info("%s\n%s", e.checkpoint, table)
    if e.output:
        out = Path(e.output)
        summary = {"checkpoint": str(e.checkpoint), "arch": arch, "kfold_rule": str(cfg.eval.kfold_rule),
                   "results": results, "average_accuracy": mean_accuracy(results)}
        write_json_atomic(out, summary)
        write_text_atomic(out.with_suffix(".md"), table + "\n")
        log.info("wrote %s and %s", out, out.with_suffix(".md"))
    return results


if __name__ == "__main__":  # the command line moved to the top-level script (issue 13)
    raise SystemExit("face_recognition_training.evaluate is a library module: run `python evaluate_fr.py` with the same "
                     "arguments")
