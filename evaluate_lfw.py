"""LFW ``pairs.txt`` protocol on any embedding set keyed ``Name_%04d`` (see configs/evaluate_lfw_config.yaml).

``pairs.txt``: a header ``<folds>\\t<pairs per class>`` (``10\\t300``), then per fold 300 genuine
lines ``name\\ti\\tj`` and 300 impostor lines ``name1\\ti\\tname2\\tj``. An embedding is looked up
by the last ``/``-part of its name (``Aaron_Eckhart/Aaron_Eckhart_0001`` from ``encode.py`` on the
LFW class folders, or ``Aaron_Eckhart_0001`` from the original ``.pt`` dicts).

With ``reference`` set, the first image of each pair comes from the reference set (e.g. real LFW)
and the second from ``embeddings`` (e.g. its synthetic variations): the original's real-vs-variation
comparison. Reports the 10-fold accuracy, EER/FMR100/FMR1000/AUC/FDR and the plots of evaluate.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from face_recognition_training.verification import kfold_accuracy
from utils.embeddings import EmbeddingSet, load_embeddings
from utils.identity_metrics import check_embeddings, check_same_dim, score_summary, write_report

log = logging.getLogger(__name__)


def read_lfw_pairs(path: str | os.PathLike) -> tuple[list[tuple[str, str]], np.ndarray, int]:
    """Parse ``pairs.txt``.

    Returns:
        pairs (P,) of ``(Name_%04d, Name_%04d)``, is_same (P,) bool, and the number of folds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LFW pairs file {path} does not exist (evaluate_lfw.pairs)")
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not lines or len(lines[0]) != 2 or not all(x.isdigit() for x in lines[0]):
        raise ValueError(
            f"{path}: the first line must be '<folds> <pairs per class>', found {' '.join(lines[0]) if lines else 'an empty file'}"
        )
    n_folds, per_class = int(lines[0][0]), int(lines[0][1])
    pairs: list[tuple[str, str]] = []
    is_same: list[bool] = []
    for number, fields in enumerate(lines[1:], start=2):
        try:
            if len(fields) == 3:
                pairs.append((f"{fields[0]}_{int(fields[1]):04d}", f"{fields[0]}_{int(fields[2]):04d}"))
            elif len(fields) == 4:
                pairs.append((f"{fields[0]}_{int(fields[1]):04d}", f"{fields[2]}_{int(fields[3]):04d}"))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{path}:{number}: expected 'name i j' or 'name1 i name2 j', found {' '.join(fields)!r}"
            ) from None
        is_same.append(len(fields) == 3)
    if len(pairs) != 2 * n_folds * per_class:
        raise ValueError(
            f"{path}: the header promises {n_folds} folds x 2 x {per_class} pairs, found {len(pairs)} pairs"
        )
    return pairs, np.asarray(is_same), n_folds


def _lookup(embeddings: EmbeddingSet, what: str) -> tuple[dict[str, int], np.ndarray]:
    """Map ``Name_%04d`` -> row, and the unit (N, D) matrix."""
    emb, _ = check_embeddings(embeddings.embeddings, None, what)
    keys = [name.rsplit("/", 1)[-1] for name in embeddings.names]
    index = {key: i for i, key in enumerate(keys)}
    if len(index) != len(keys):
        raise ValueError(
            f"{what}: {len(keys) - len(index)} embedding names share their last '/'-part; LFW keys must be unique"
        )
    return index, emb


def evaluate_lfw_set(
    embeddings: EmbeddingSet,
    pairs_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    reference: EmbeddingSet | None = None,
    *,
    on_missing: str = "error",
    name: str = "embeddings",
    reference_name: str = "reference",
) -> dict:
    """Score the LFW pairs with ``embeddings`` (or ``reference`` x ``embeddings``), write report and plots.

    Args:
        embeddings: set keyed ``Name_%04d`` (after the last ``/``).
        pairs_path: LFW ``pairs.txt``.
        out_dir: folder for ``report.json``, ``report.md`` and the PNGs.
        reference: optional set for the first image of every pair.
        on_missing: ``error`` (default) or ``skip`` pairs whose images have no embedding (the folds
            then shrink and are no longer the official ones; the report counts the skipped pairs).
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"evaluate_lfw.on_missing={on_missing!r} is unknown; expected 'error' or 'skip'")
    pairs, is_same, n_folds = read_lfw_pairs(pairs_path)
    second_index, second = _lookup(embeddings, name)
    first_index, first = (second_index, second) if reference is None else _lookup(reference, reference_name)
    check_same_dim(first, second, reference_name if reference is not None else name, name)
    found = np.array([a in first_index and b in second_index for a, b in pairs])
    if not found.all():
        example = next(p for p, ok in zip(pairs, found) if not ok)
        message = f"{(~found).sum()} of {len(pairs)} LFW pairs name images without embeddings (e.g. {example[0]}, {example[1]})"
        if on_missing == "error":
            raise ValueError(f"{name}: {message}; set evaluate_lfw.on_missing=skip to drop them")
        log.warning("%s: %s; skipped", name, message)
    rows_a = np.array([first_index[a] for (a, _), ok in zip(pairs, found) if ok], dtype=np.int64)
    rows_b = np.array([second_index[b] for (_, b), ok in zip(pairs, found) if ok], dtype=np.int64)
    sims = np.einsum("ij,ij->i", first[rows_a], second[rows_b])  # (P,)
    same = is_same[found]
    accuracy = kfold_accuracy(sims, same, n_folds=n_folds)
    report = {
        "dataset": {
            "embeddings": name,
            "reference": reference_name if reference is not None else "none",
            "pairs": str(pairs_path),
            "n_pairs": int(found.sum()),
            "skipped_pairs": int((~found).sum()),
        },
        "lfw": {
            "accuracy_mean_percent": accuracy["accuracy_mean"],
            "accuracy_std_percent": accuracy["accuracy_std"],
            "fold_accuracies_percent": [round(a, 3) for a in accuracy["fold_accuracies"]],
            "fold_thresholds": [round(t, 4) for t in accuracy["thresholds"]],
        },
        "verification": score_summary(sims[same], sims[~same], out_dir, title=f"LFW {Path(name).name}"),
    }
    write_report(report, out_dir, title=f"LFW verification of {name}")
    log.info(
        "LFW accuracy %.2f +- %.2f %%, EER %.3f %%",
        accuracy["accuracy_mean"],
        accuracy["accuracy_std"],
        100 * report["verification"]["eer"],
    )
    return report


def evaluate_lfw(cfg: DictConfig) -> dict:
    """``evaluate_lfw.py``: load the configured sets and run :func:`evaluate_lfw_set`."""
    e = cfg.evaluate_lfw
    reference = load_embeddings(e.reference) if e.reference else None
    return evaluate_lfw_set(
        load_embeddings(e.embeddings),
        e.pairs,
        e.output_dir,
        reference,
        on_missing=str(e.on_missing),
        name=str(e.embeddings),
        reference_name=str(e.reference) if e.reference else "reference",
    )


@hydra.main(config_path="configs", config_name="evaluate_lfw_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`evaluate_lfw`; bad input ends with one error line and exit status 1."""
    try:
        evaluate_lfw(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
