"""Measure a synthetic embedding set: separability, consistency, uniqueness, leakage (see configs/evaluate_config.yaml).

Writes ``report.json``, ``report.md`` (Markdown tables), ``score_histograms.png`` (genuine and
impostor scores with the EER threshold) and ``det_curve.png`` (log axes) into ``evaluate.output_dir``.

    python evaluate.py evaluate.synthetic=outputs/embeddings/<name>.npz evaluate.real=data/embeddings_elasticface_ffhq_128.npz
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from utils.embeddings import EmbeddingSet, load_embeddings
from utils.identity_metrics import (
    check_embeddings,
    check_same_dim,
    consistency,
    genuine_scores,
    identity_centres,
    impostor_scores,
    leakage,
    score_summary,
    uniqueness,
    write_report,
)

log = logging.getLogger(__name__)


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
    impostor_pairs: int | None = 1_000_000,
    max_exhaustive: int = 50_000_000,
    seed: int = 0,
    uniqueness_threshold: float = 0.3,
    consistency_threshold: float = 0.3,
    leakage_threshold: float = 0.3,
    synthetic_name: str = "synthetic",
    real_name: str = "real",
    top_leaks: int = 10,
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
        "verification": score_summary(genuine, impostor, out_dir, title=f"{Path(synthetic_name).name}"),
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
    )


@hydra.main(config_path="configs", config_name="evaluate_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`evaluate`; bad input ends with one error line and exit status 1."""
    try:
        evaluate(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
