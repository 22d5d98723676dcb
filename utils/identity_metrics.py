"""Identity metrics of an embedding set (pure numpy / scikit-learn, no pyeer).

Scores are cosine similarities of unit embeddings. Genuine pairs: all pairs inside an
identity. Impostor pairs: all pairs across identities, or a seeded random sample. Every
similarity matrix is built in row chunks, so 10,000 identities x 50 images (500,000 x 512)
never form a 500,000 x 500,000 matrix.

Verification metrics follow ISO/IEC 19795-1 naming: FMR (false match rate, impostors
accepted) and FNMR (false non-match rate, genuines rejected) at a threshold ``score >= t``;
EER where the two are equal (linear interpolation between the two operating points around
the crossing; its threshold is the first one with FNMR <= FMR); FMR100 / FMR1000 = the lowest
FNMR at FMR <= 1% / 0.1%; AUC of the ROC; Fisher discriminant ratio
``FDR = (mu_g - mu_i)^2 / (sigma_g^2 + sigma_i^2)``.

DCFace (Kim et al., CVPR 2023) set metrics: *uniqueness* = share of identity centres whose
cosine similarity to every other centre is below a threshold; *consistency* = share of
samples whose similarity to their own identity centre is at least a threshold. *Leakage*:
for each synthetic identity centre the highest similarity to any real embedding.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

CHUNK = 4096  # most rows of one similarity block; _row_chunk also caps a block at 256 MB
SAMPLE_ROWS = 64  # impostor sampling: scores come in SAMPLE_ROWS x SAMPLE_ROWS blocks ...
SAMPLE_BLOCKS = 64  # ... SAMPLE_BLOCKS of them per matrix product


def check_embeddings(
    embeddings: np.ndarray, labels: np.ndarray | None = None, what: str = "embeddings"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate and L2-normalise an embedding set.

    Args:
        embeddings: (N, D) float array, N >= 1.
        labels: optional (N,) integer identity labels, expected to cover 0..K-1 (as ``encode.py``
            writes them); a label missing from that range is an empty identity.
        what: the name of the set in error messages (e.g. the file path).
    Returns:
        (N, D) float32 unit rows and (N,) int64 labels (or None).
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"{what}: expected a non-empty (N, D) embedding matrix, found shape {embeddings.shape}")
    embeddings = embeddings.astype(np.float32, copy=False)
    if not np.isfinite(embeddings).all():
        raise ValueError(f"{what}: embeddings contain NaN or inf")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what}: embedding rows {np.flatnonzero(norms[:, 0] == 0)[:5].tolist()} are all zero")
    embeddings = embeddings / norms
    if labels is None:
        return embeddings, None
    labels = np.asarray(labels)
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"{what}: labels do not match the embeddings: {labels.size} labels for {embeddings.shape[0]} embeddings"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers, found dtype {labels.dtype}")
    present = np.unique(labels)
    if present[0] < 0:
        raise ValueError(f"{what}: labels must be identity indices >= 0, found {present[0]}")
    if len(present) != present[-1] + 1:
        missing = np.setdiff1d(np.arange(present[-1] + 1), present)
        raise ValueError(
            f"{what}: empty identity: labels cover 0..{present[-1]} but identities {missing[:5].tolist()} have no embeddings"
        )
    return embeddings, labels.astype(np.int64, copy=False)


def check_same_dim(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    """Raise when two embedding matrices have different embedding sizes."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"embeddings of different dimensions: {what_a} has {a.shape[1]}-d embeddings, {what_b} has {b.shape[1]}-d"
        )


def _row_chunk(n_cols: int, budget_bytes: int = 256 * 2**20) -> int:
    """Rows per (rows, n_cols) float32 similarity block within ``budget_bytes``."""
    return max(1, min(CHUNK, budget_bytes // (4 * max(n_cols, 1))))


def genuine_scores(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """All within-identity pair similarities (i < j). embeddings: (N, D) unit; labels: (N,). Returns (G,) float32."""
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0])
    counts = np.diff(np.r_[starts, len(order)])
    out = np.empty(int((counts * (counts - 1) // 2).sum()), dtype=np.float32)
    pos = 0
    for start, count in zip(starts, counts):
        if count < 2:
            continue
        block = embeddings[order[start : start + count]]  # (c, D)
        iu = np.triu_indices(count, k=1)
        sims = (block @ block.T)[iu]
        out[pos : pos + len(sims)] = sims
        pos += len(sims)
    return out


def impostor_scores(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_pairs: int | None = None,
    seed: int = 0,
    max_exhaustive: int = 50_000_000,
) -> np.ndarray:
    """Cross-identity pair similarities.

    Args:
        embeddings: (N, D) unit rows; labels: (N,) with at least 2 identities.
        n_pairs: None = every pair i < j of different identities (chunked; refused above
            ``max_exhaustive`` pairs), else this many pairs drawn with ``seed``: all cross-identity
            pairs between two random sets of ``SAMPLE_ROWS`` rows, repeated. Each pair is uniform
            over the impostor pairs, and only two small row sets are gathered per block instead of
            two rows per pair (random row gathers dominate at 10^7 pairs).
    Returns:
        (I,) float32.
    """
    n = len(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"impostor scores need at least 2 identities, found {len(np.unique(labels))}")
    if n_pairs is None:
        counts = np.bincount(labels)
        total = n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())
        if total > max_exhaustive:
            raise ValueError(
                f"{total:,} impostor pairs exceed max_exhaustive={max_exhaustive:,}; set impostor_pairs to a sample size"
            )
        parts = []
        step = _row_chunk(n)
        for a in range(0, n, step):
            b = min(a + step, n)
            sims = embeddings[a:b] @ embeddings[a:].T  # (b - a, n - a)
            upper = np.arange(a, b)[:, None] < np.arange(a, n)[None, :]
            parts.append(sims[upper & (labels[a:b, None] != labels[None, a:])])
        return np.concatenate(parts).astype(np.float32, copy=False)
    if n_pairs < 1:
        raise ValueError(f"impostor_pairs must be >= 1 or null (all pairs), found {n_pairs}")
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    total = 0
    while total < n_pairs:
        a = rng.integers(0, n, (SAMPLE_BLOCKS, SAMPLE_ROWS))  # (K, r) row indices
        b = rng.integers(0, n, (SAMPLE_BLOCKS, SAMPLE_ROWS))
        sims = np.matmul(embeddings[a], embeddings[b].transpose(0, 2, 1))  # (K, r, r)
        scores = sims[labels[a][:, :, None] != labels[b][:, None, :]]
        parts.append(scores)
        total += len(scores)
    return np.concatenate(parts)[:n_pairs].astype(np.float32, copy=False)


@dataclass
class ErrorCurves:
    """Operating points, FMR ascending: ``fmr``, ``fnmr``, ``thresholds`` (P,) for decisions ``score >= t``."""

    fmr: np.ndarray
    fnmr: np.ndarray
    thresholds: np.ndarray


def error_curves(genuine: np.ndarray, impostor: np.ndarray) -> ErrorCurves:
    """FMR/FNMR at every distinct score used as threshold. genuine: (G,), impostor: (I,)."""
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError(f"need genuine and impostor scores, found {len(genuine)} genuine and {len(impostor)} impostor")
    is_genuine = np.r_[np.ones(len(genuine), dtype=bool), np.zeros(len(impostor), dtype=bool)]
    fmr, tmr, thresholds = roc_curve(is_genuine, np.r_[genuine, impostor], drop_intermediate=False)
    return ErrorCurves(fmr=fmr, fnmr=1.0 - tmr, thresholds=thresholds)


def fnmr_at_fmr(curves: ErrorCurves, fmr: float) -> float:
    """Lowest FNMR among thresholds whose FMR is at most ``fmr``."""
    return float(curves.fnmr[curves.fmr <= fmr + 1e-12].min())


def verification_metrics(
    genuine: np.ndarray, impostor: np.ndarray, curves: ErrorCurves | None = None
) -> dict[str, float]:
    """EER (+ threshold), FMR100, FMR1000, AUC, means/stds and FDR; rates are fractions in [0, 1]."""
    curves = error_curves(genuine, impostor) if curves is None else curves
    d = curves.fnmr - curves.fmr  # non-increasing along the curve; 1 at the start, -1 at the end
    k = int(np.argmax(d <= 0))
    t = d[k - 1] / (d[k - 1] - d[k])
    eer = curves.fmr[k - 1] + t * (curves.fmr[k] - curves.fmr[k - 1])
    mu_g, mu_i = float(np.mean(genuine, dtype=np.float64)), float(np.mean(impostor, dtype=np.float64))
    sd_g, sd_i = float(np.std(genuine, dtype=np.float64)), float(np.std(impostor, dtype=np.float64))
    return {
        "eer": float(eer),
        "eer_threshold": float(curves.thresholds[k]),
        "fmr100": fnmr_at_fmr(curves, 1e-2),
        "fmr1000": fnmr_at_fmr(curves, 1e-3),
        "auc": float(auc(curves.fmr, 1.0 - curves.fnmr)),
        "genuine_mean": mu_g,
        "genuine_std": sd_g,
        "impostor_mean": mu_i,
        "impostor_std": sd_i,
        "fdr": (mu_g - mu_i) ** 2 / (sd_g**2 + sd_i**2) if sd_g + sd_i > 0 else float("inf"),
        "n_genuine": int(len(genuine)),
        "n_impostor": int(len(impostor)),
    }


def identity_centres(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit mean embedding per identity: (K, D) with row k the centre of label k (labels 0..K-1)."""
    n_ids = int(labels.max()) + 1
    membership = scipy.sparse.csr_matrix(
        (np.ones(len(labels), np.float32), (labels, np.arange(len(labels)))), shape=(n_ids, len(labels))
    )
    centres = np.asarray(membership @ embeddings, dtype=np.float32)  # (K, D) sums
    return centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)


def nearest_similarity(
    queries: np.ndarray, refs: np.ndarray, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row the highest similarity to any row of ``refs`` and its index, in chunks.

    Args:
        queries: (Q, D) unit; refs: (R, D) unit; exclude_self: queries are refs (skip the diagonal).
    Returns:
        best (Q,) float32 (-inf when nothing to compare) and index (Q,) int64 (-1 then).
    """
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    index = np.full(len(queries), -1, dtype=np.int64)
    step = _row_chunk(len(refs))
    for a in range(0, len(queries), step):
        sims = queries[a : a + step] @ refs.T  # (q, R)
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, a + rows] = -np.inf
        if sims.shape[1]:
            index[a : a + step] = sims.argmax(axis=1)
            best[a : a + step] = sims[np.arange(sims.shape[0]), index[a : a + step]]
    index[~np.isfinite(best)] = -1
    return best, index


def uniqueness(centres: np.ndarray, threshold: float) -> dict[str, float]:
    """DCFace uniqueness: share of centres (K, D) with similarity < ``threshold`` to every other centre."""
    nearest, _ = nearest_similarity(centres, centres, exclude_self=True)
    unique = nearest < threshold
    return {
        "uniqueness": float(unique.mean()),
        "n_unique": int(unique.sum()),
        "n_identities": int(len(centres)),
        "uniqueness_threshold": float(threshold),
    }


def consistency(embeddings: np.ndarray, labels: np.ndarray, centres: np.ndarray, threshold: float) -> dict[str, float]:
    """DCFace consistency: share of samples (N, D) whose similarity to their own centre (K, D) is >= ``threshold``."""
    sims = np.empty(len(labels), dtype=np.float32)
    step = 1 << 16
    for a in range(0, len(labels), step):
        sims[a : a + step] = np.einsum("ij,ij->i", embeddings[a : a + step], centres[labels[a : a + step]])
    return {
        "consistency": float((sims >= threshold).mean()),
        "consistency_threshold": float(threshold),
        "centre_similarity_mean": float(sims.mean()),
    }


def leakage(centres: np.ndarray, real: np.ndarray, threshold: float) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Nearest real neighbour of each synthetic identity centre.

    Args:
        centres: (K, D) unit synthetic identity centres; real: (M, D) unit real embeddings.
    Returns:
        summary dict, best similarity (K,) and index of the nearest real embedding (K,).
    """
    check_same_dim(centres, real, "the synthetic set", "the real set")
    best, index = nearest_similarity(centres, real)
    summary = {
        "leakage_threshold": float(threshold),
        "n_leaked": int((best > threshold).sum()),
        "leaked_share": float((best > threshold).mean()),
        "real_nn_mean": float(best.mean()),
        "real_nn_max": float(best.max()),
        "n_real": int(len(real)),
    }
    return summary, best, index


def plot_score_histograms(
    genuine: np.ndarray, impostor: np.ndarray, threshold: float, path: str | os.PathLike, title: str = ""
) -> Path:
    """PNG of genuine/impostor score histograms (density) with the EER threshold as a vertical line."""
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot()
    lo = float(min(genuine.min(), impostor.min()))
    hi = float(max(genuine.max(), impostor.max()))
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 101)
    ax.hist(impostor, bins=bins, density=True, alpha=0.5, color="tab:red", label=f"impostor ({len(impostor):,})")
    ax.hist(genuine, bins=bins, density=True, alpha=0.5, color="tab:green", label=f"genuine ({len(genuine):,})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"EER threshold {threshold:.3f}")
    ax.set(xlabel="cosine similarity", ylabel="density", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_det(curves: ErrorCurves, path: str | os.PathLike, title: str = "", max_points: int = 5000) -> Path:
    """PNG of the DET curve (FNMR over FMR, both log axes); zero rates are drawn at the axis floor."""
    keep = np.unique(np.linspace(0, len(curves.fmr) - 1, min(max_points, len(curves.fmr))).astype(int))
    floor = 1e-6
    fig = Figure(figsize=(5, 5), dpi=120)
    ax = fig.add_subplot()
    ax.plot(np.maximum(curves.fmr[keep], floor), np.maximum(curves.fnmr[keep], floor), color="tab:blue")
    ax.plot([floor, 1], [floor, 1], color="grey", linewidth=0.5, linestyle=":")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), xlabel="FMR", ylabel="FNMR", title=title)
    ax.grid(True, which="both", linewidth=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def score_summary(
    genuine: np.ndarray, impostor: np.ndarray, out_dir: str | os.PathLike, prefix: str = "", title: str = ""
) -> dict:
    """Verification metrics of a genuine (G,) / impostor (I,) score set plus its histogram and DET PNGs in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = error_curves(genuine, impostor)
    metrics = verification_metrics(genuine, impostor, curves)
    hist = plot_score_histograms(
        genuine, impostor, metrics["eer_threshold"], out_dir / f"{prefix}score_histograms.png", title
    )
    det = plot_det(curves, out_dir / f"{prefix}det_curve.png", title)
    return {**metrics, "plots": [hist.name, det.name]}


_PERCENT = {"eer", "fmr100", "fmr1000", "uniqueness", "consistency", "leaked_share"}


def markdown_table(report: dict, title: str) -> str:
    """Markdown: one ``| metric | value |`` table per section of ``report`` (rates in percent)."""
    lines = [f"# {title}", ""]
    for section, values in report.items():
        if not isinstance(values, dict):
            lines += [f"- {section}: {values}", ""]
            continue
        lines += [f"## {section}", "", "| metric | value |", "|---|---|"]
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            elif isinstance(value, int):
                text = f"{value:,}"
            elif key in _PERCENT:
                text = f"{100 * value:.3f} %"
            else:
                text = f"{value:.4f}"
            lines.append(f"| {key} | {text} |")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | os.PathLike, title: str) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (each via a temporary file + rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / "report.json", out_dir / "report.md")
    for path, text in zip(paths, (json.dumps(report, indent=2), markdown_table(report, title))):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=out_dir)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    return paths
