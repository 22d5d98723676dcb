"""Presenting verification scores: histogram and DET figures, the markdown table and the report files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from evaluation.metrics import ErrorCurves, error_curves, verification_metrics
from utils.atomic import write_json_atomic, write_text_atomic


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
    genuine: np.ndarray,
    impostor: np.ndarray,
    out_dir: str | os.PathLike,
    prefix: str = "",
    title: str = "",
    error_rates: str = "pyeer",
) -> dict:
    """Verification metrics of a genuine (G,) / impostor (I,) score set plus its histogram and DET PNGs in ``out_dir``.

    ``error_rates`` names the EER / FMR100 / FMR1000 definition (:data:`evaluation.metrics.ERROR_RATE_DEFINITIONS`);
    the result says which one in ``error_rate_definition``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = error_curves(genuine, impostor)
    metrics = verification_metrics(genuine, impostor, curves, definition=error_rates)
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
    return (write_json_atomic(out_dir / "report.json", report),
            write_text_atomic(out_dir / "report.md", markdown_table(report, title) + "\n"))
