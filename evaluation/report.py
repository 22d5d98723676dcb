"""Identity separability of embedding sets (``evaluate.py``) and the LFW pairs protocol (``evaluate_lfw.py``).

:func:`evaluate_sets`: EER, FMR100/FMR1000, AUC, genuine/impostor statistics, FDR, DCFace
uniqueness and consistency, and leakage against real embeddings, written as ``report.json``,
``report.md``, ``score_histograms.png`` and ``det_curve.png``.

LFW ``pairs.txt`` protocol on any embedding set keyed ``Name_%04d`` (:func:`evaluate_lfw_set`).

``pairs.txt``: a header ``<folds>\\t<pairs per class>`` (``10\\t300``), then per fold 300 genuine
lines ``name\\ti\\tj`` and 300 impostor lines ``name1\\ti\\tname2\\tj``. An embedding is looked up
by the last ``/``-part of its name (``Aaron_Eckhart/Aaron_Eckhart_0001`` from ``encode.py`` on the
LFW class folders, or ``Aaron_Eckhart_0001`` from the original ``.pt`` dicts).

With ``reference`` set, the first image of each pair comes from the reference set (e.g. real LFW)
and the second from ``embeddings`` (e.g. its synthetic variations): the original's real-vs-variation
comparison. Reports the 10-fold accuracy (insightface's rule by default, named in the report),
EER/FMR100/FMR1000/AUC/FDR and the plots of evaluate.py.

EER and FMR100/FMR1000 follow pyeer's definitions by default (IDiff-Face computed its numbers with
pyeer); ``error_rates=bounded`` selects the other one; the report names the one used.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from embedding.files import EmbeddingSet, load_embeddings
from evaluation.identity import consistency, identity_centres, leakage, uniqueness
from evaluation.metrics import ERROR_RATE_DEFINITIONS, check_embeddings, check_same_dim, genuine_scores, impostor_scores
from evaluation.summary import score_summary, write_report
from evaluation.verification import KFOLD_RULES, kfold_accuracy
from utils.settings import Choice, Number, check_settings

log = logging.getLogger(__name__)

#: What ``evaluate.py`` checks before any work (thresholds are cosine similarities).
SETTINGS = (
    Number("evaluate.impostor_pairs", low=1, high=10**9, integer=True, optional=True),  # 4 GB of float32 scores
    Number("evaluate.max_exhaustive", low=1, high=10**12, integer=True),
    Number("evaluate.seed", low=0, integer=True),
    Number("evaluate.thresholds.uniqueness", low=-1, high=1),
    Number("evaluate.thresholds.consistency", low=-1, high=1),
    Number("evaluate.thresholds.leakage", low=-1, high=1),
    Choice("evaluate.error_rates", tuple(ERROR_RATE_DEFINITIONS)),
)
#: What ``evaluate_lfw.py`` checks before any work.
LFW_SETTINGS = (Choice("evaluate_lfw.on_missing", ("error", "skip")), Choice("evaluate_lfw.kfold_rule", KFOLD_RULES),
                Choice("evaluate_lfw.error_rates", tuple(ERROR_RATE_DEFINITIONS)))


def _identity_names(synthetic: EmbeddingSet, n_identities: int) -> list[str]:
    """Name of each identity label: the part of an embedding name before ``/`` (``encode.py`` names)."""
    names = [""] * n_identities
    for name, label in zip(synthetic.names, synthetic.labels):
        names[label] = name.split("/", 1)[0]
    return names


def evaluate_sets(
    synthetic: EmbeddingSet,
    out_dir: str | os.PathLike,
    real: EmbeddingSet | None = None,
    *,
    impostor_pairs: int | None = 10_000_000,
    max_exhaustive: int = 50_000_000,
    seed: int = 0,
    uniqueness_threshold: float = 0.3,
    consistency_threshold: float = 0.3,
    leakage_threshold: float = 0.3,
    synthetic_name: str = "synthetic",
    real_name: str = "real",
    top_leaks: int = 10,
    error_rates: str = "pyeer",
) -> dict:
    """All metrics of a labelled synthetic set (and its leakage against ``real``), written to ``out_dir``.

    Args:
        synthetic: (N, D) embeddings with (N,) identity labels 0..K-1.
        out_dir: folder for the report and plots.
        real: optional (M, D) real embeddings (e.g. FFHQ, the training set of the generator).
        impostor_pairs: sample size of impostor pairs (seeded by ``seed``); None = all pairs,
            refused above ``max_exhaustive``.
        uniqueness_threshold, consistency_threshold, leakage_threshold: cosine thresholds
            (backend-specific: ~0.3 for ElasticFace, ~0.9 for dlib).
        synthetic_name, real_name: names in messages and the report (the file paths).
        top_leaks: how many most similar synthetic-real pairs the report lists.
        error_rates: EER / FMR100 / FMR1000 definition, ``pyeer`` (IDiff-Face's numbers) or ``bounded``
            (:data:`evaluation.metrics.ERROR_RATE_DEFINITIONS`).
    Returns:
        the report dict (also in ``report.json``).
    """
    if synthetic.labels is None:
        raise ValueError(
            f"{synthetic_name} has no identity labels; encode class folders or identity blocks with encode.py to .npz"
        )
    emb, labels = check_embeddings(synthetic.embeddings, synthetic.labels, synthetic_name)
    real_emb = None
    if real is not None:
        real_emb, _ = check_embeddings(real.embeddings, None, real_name)
        check_same_dim(emb, real_emb, synthetic_name, real_name)
    n_ids = int(labels.max()) + 1
    log.info("%s: %d embeddings, %d identities, %d-d", synthetic_name, len(emb), n_ids, emb.shape[1])
    genuine = genuine_scores(emb, labels)
    if len(genuine) == 0:
        raise ValueError(f"{synthetic_name}: no identity has two embeddings, so there are no genuine pairs")
    impostor = impostor_scores(emb, labels, impostor_pairs, seed=seed, max_exhaustive=max_exhaustive)
    report: dict = {
        "dataset": {
            "synthetic": synthetic_name,
            "n_embeddings": int(len(emb)),
            "n_identities": n_ids,
            "dim": int(emb.shape[1]),
            "impostor_pairs": "all" if impostor_pairs is None else int(impostor_pairs),
            "seed": int(seed),
        },
        "verification": score_summary(
            genuine, impostor, out_dir, title=f"{Path(synthetic_name).name}", error_rates=error_rates
        ),
    }
    del genuine, impostor
    centres = identity_centres(emb, labels)
    report["identities"] = {
        **uniqueness(centres, uniqueness_threshold),
        **consistency(emb, labels, centres, consistency_threshold),
    }
    if real is not None and real_emb is not None:
        summary, best, index = leakage(centres, real_emb, leakage_threshold)
        id_names = _identity_names(synthetic, n_ids)
        top = np.argsort(-best)[:top_leaks]
        summary["real"] = real_name
        summary["most_similar"] = [f"{id_names[k]} ~ {real.names[index[k]]} ({best[k]:.3f})" for k in top]
        report["leakage"] = summary
    write_report(report, out_dir, title=f"Identity metrics of {synthetic_name}")
    log.info(
        "EER %.3f %%, FMR100 %.3f %%, report in %s",
        100 * report["verification"]["eer"],
        100 * report["verification"]["fmr100"],
        out_dir,
    )
    return report


def evaluate(cfg: DictConfig) -> dict:
    """``evaluate.py``: load ``cfg.evaluate.synthetic`` (and ``real``) and run :func:`evaluate_sets`."""
    check_settings(cfg, SETTINGS)
    e = cfg.evaluate
    synthetic = load_embeddings(e.synthetic)
    real = load_embeddings(e.real) if e.real else None
    return evaluate_sets(
        synthetic,
        e.output_dir,
        real,
        impostor_pairs=None if e.impostor_pairs is None else int(e.impostor_pairs),
        max_exhaustive=int(e.max_exhaustive),
        seed=int(e.seed),
        uniqueness_threshold=float(e.thresholds.uniqueness),
        consistency_threshold=float(e.thresholds.consistency),
        leakage_threshold=float(e.thresholds.leakage),
        synthetic_name=str(e.synthetic),
        real_name=str(e.real) if e.real else "real",
        error_rates=str(e.error_rates),
    )



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
    kfold_rule: str = "insightface",
    error_rates: str = "pyeer",
) -> dict:
    """Score the LFW pairs with ``embeddings`` (or ``reference`` x ``embeddings``), write report and plots.

    Args:
        embeddings: set keyed ``Name_%04d`` (after the last ``/``).
        pairs_path: LFW ``pairs.txt``.
        out_dir: folder for ``report.json``, ``report.md`` and the PNGs.
        reference: optional set for the first image of every pair.
        on_missing: ``error`` (default) or ``skip`` pairs whose images have no embedding (the folds
            then shrink and are no longer the official ones; the report counts the skipped pairs).
        kfold_rule: ``insightface`` (the papers' protocol) or ``midpoint``
            (:data:`evaluation.verification.KFOLD_RULES`); the report names it.
        error_rates: EER / FMR definition of the score summary (``pyeer`` or ``bounded``).
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
    accuracy = kfold_accuracy(first[rows_a], second[rows_b], same, n_folds=n_folds, rule=kfold_rule)
    report = {
        "dataset": {
            "embeddings": name,
            "reference": reference_name if reference is not None else "none",
            "pairs": str(pairs_path),
            "n_pairs": int(found.sum()),
            "skipped_pairs": int((~found).sum()),
        },
        "lfw": {
            "kfold_rule": kfold_rule,
            "accuracy_mean_percent": accuracy["accuracy_mean"],
            "accuracy_std_percent": accuracy["accuracy_std"],
            "fold_accuracies_percent": [round(a, 3) for a in accuracy["fold_accuracies"]],
            "fold_thresholds": [round(t, 4) for t in accuracy["thresholds"]],
            "thresholds_on": accuracy["threshold_on"],
        },
        "verification": score_summary(
            sims[same], sims[~same], out_dir, title=f"LFW {Path(name).name}", error_rates=error_rates
        ),
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
    check_settings(cfg, LFW_SETTINGS)
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
        kfold_rule=str(e.kfold_rule),
        error_rates=str(e.error_rates),
    )
