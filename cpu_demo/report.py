"""The demo's report: ``report.md``, ``report.json``, ``overview.png`` and the figures they show.

Figures (``figures/``): the training loss (the shipped checkpoint's history and the demo's own
steps), a grid of generated identities next to a real photo of each person, the aligned crops, and
(from ``evaluate.py``) genuine/impostor histograms and the DET curve. ``report.json`` splits the
numbers into ``metrics`` (a pure function of the seed: equal on every run) and ``seconds`` (wall clock).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from cpu_demo.data import person_of
from utils.atomic import write_json_atomic, write_text_atomic
from utils.image_io import discover_identities, read_identity, read_image

log = logging.getLogger(__name__)

FIGURES = {"loss": "figures/loss.png", "samples": "figures/generated_identities.png", "aligned": "figures/aligned_crops.png"}
METRICS_FILE = "metrics.jsonl"


def read_losses(run_dir: str | os.PathLike | None) -> tuple[list[int], list[float]]:
    """(steps, losses) of ``<run_dir>/metrics.jsonl``; empty when the run or its log is absent."""
    path = Path(run_dir) / METRICS_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return [], []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def plot_loss(pretraining: str | os.PathLike | None, demo_run: str | os.PathLike, path: Path) -> Path:
    """Loss over steps: the shipped checkpoint's training (grey) and the demo's own continuation (blue)."""
    fig = Figure(figsize=(6, 3.6), dpi=110)
    ax = fig.add_subplot()
    steps, losses = read_losses(pretraining)
    if steps:
        ax.plot(steps, losses, color="grey", lw=1, label="shipped checkpoint (python main.py experiment=demo)")
    steps, losses = read_losses(demo_run)
    ax.plot(steps, losses, color="tab:blue", lw=1.5, marker="." if len(steps) < 40 else None, label="this demo run")
    ax.set(xlabel="training step", ylabel="MSE on eps", title="training loss")
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _montage(rows: Sequence[Sequence[np.ndarray]], size: int, pad: int = 2) -> np.ndarray:
    """Rows of (H, W, 3) uint8 images (any sizes), each resized to ``size`` px, on a white canvas."""
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (size + pad) + pad, cols * (size + pad) + pad, 3), 255, dtype=np.uint8)
    for i, tiles in enumerate(rows):
        for j, t in enumerate(tiles):
            tile = np.asarray(Image.fromarray(t).resize((size, size), Image.BICUBIC))
            y, x = pad + i * (size + pad), pad + j * (size + pad)
            canvas[y : y + size, x : x + size] = tile
    return canvas


def plot_identity_grid(
    folder: Path, photos: Mapping[str, Path], path: Path, title: str, per_row: int = 8, size: int = 96
) -> Path:
    """One row per identity of ``folder`` (blocks or class folders): a real photo, then up to ``per_row`` images."""
    sources = discover_identities(folder)
    names = list(sources)
    rows = []
    for name in names:
        real = [read_image(photos[name])] if name in photos else []
        rows.append(real + list(read_identity(sources[name])[:per_row]))
    fig = Figure(figsize=(1.0 + 0.9 * (per_row + 1), 0.6 + 0.95 * len(rows)), dpi=110)
    ax = fig.add_subplot()
    ax.imshow(_montage(rows, size))
    ax.set_yticks([2 + (i + 0.5) * (size + 2) for i in range(len(names))], names)
    ax.set_xticks([2 + size / 2], ["real photo"])
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def person_photos(faces_dir: Path) -> dict[str, Path]:
    """The first photo (sorted by name) of every person in the demo photo folder."""
    photos: dict[str, Path] = {}
    for p in sorted(faces_dir.iterdir()):
        photos.setdefault(person_of(p.stem), p)
    return photos


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if key in ("eer", "fmr100", "fmr1000", "detected_share", "identity_match"):
        return f"{100 * value:.1f} %"
    return f"{value:.4f}"


METRIC_NOTES = {
    "detected_share": "generated images in which MTCNN finds a face",
    "error_rate_definition": "how EER and FNMR at FMR are read off the scores (pyeer: as IDiff-Face reported them)",
    "eer": "equal error rate of the dlib model on generated identities",
    "fmr100": "FNMR at FMR 1 %",
    "fmr1000": "FNMR at FMR 0.1 %",
    "genuine_mean": "mean cosine, two images of one generated identity",
    "impostor_mean": "mean cosine, images of two generated identities",
    "identity_match": "generated faces whose nearest real person is the conditioning person",
    "real_genuine_mean": "same, real photos of one person (reference)",
    "real_impostor_mean": "same, real photos of different people (reference)",
    "train_final_loss": "loss of the last logged interval of the demo's training",
}


def plot_overview(out_dir: Path, figures: Mapping[str, Path], metrics: Mapping[str, Any], seconds: Mapping[str, float]) -> Path:
    """``overview.png``: loss, generated grid, aligned crops, score histograms, key numbers and stage times."""
    fig = Figure(figsize=(14, 17), dpi=100)
    grid = fig.add_gridspec(4, 2, height_ratios=[0.75, 0.75, 1.0, 0.8])
    for cell, key in ((grid[0, :], "samples"), (grid[1, :], "aligned"), (grid[2, 0], "loss"), (grid[2, 1], "histograms")):
        ax = fig.add_subplot(cell)
        if key in figures and Path(figures[key]).is_file():
            ax.imshow(mpimg.imread(figures[key]))
        ax.set_axis_off()
    ax = fig.add_subplot(grid[3, 0])
    ax.set_axis_off()
    lines = [f"{k:>20}: {_fmt(k, metrics[k])}" for k in METRIC_NOTES if k in metrics]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=12)
    ax = fig.add_subplot(grid[3, 1])
    names = list(seconds)
    ax.barh(names[::-1], [seconds[n] for n in names][::-1], color="tab:blue")
    ax.set(xlabel="seconds", title=f"time per stage (total {sum(seconds.values()):.0f} s)")
    fig.tight_layout()
    path = out_dir / "overview.png"
    fig.savefig(path)
    return path


def check_finite(metrics: Mapping[str, Any]) -> None:
    """Raise when a numeric metric is NaN or infinite (the report would hide a broken stage)."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"demo metrics {bad} are not finite: {[metrics[k] for k in bad]}")


def write_report(
    out_dir: Path, settings: Mapping[str, Any], metrics: Mapping[str, Any], seconds: Mapping[str, float],
    figures: Mapping[str, Path],
) -> Path:
    """Write ``report.json``, ``overview.png`` and ``report.md`` into ``out_dir``; returns the Markdown path."""
    check_finite(metrics)
    write_json_atomic(out_dir / "report.json", {"settings": dict(settings), "metrics": dict(metrics), "seconds": dict(seconds)})
    overview = plot_overview(out_dir, figures, metrics, seconds)

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, out_dir)).as_posix()

    md = [
        "# IDiff-Face CPU demo",
        "",
        ("Real faces (five public-domain photos of three people) -> dlib embeddings -> short training of the "
         "pixel-space conditional diffusion model -> one authentic context per person -> DDIM samples -> MTCNN "
         "alignment -> class folders -> dlib embeddings -> identity metrics."),
        "",
        f"![overview]({rel(overview)})",
        "",
        "## Key numbers",
        "",
        "| metric | value | meaning |",
        "|---|---|---|",
        *[f"| {k} | {_fmt(k, metrics[k])} | {METRIC_NOTES.get(k, '')} |" for k in metrics],
        "",
        ("Cosine similarities are between unit-length dlib descriptors; dlib's vectors are not centred, so even "
         "different people score about 0.8 (compare with the real-photo references above)."),
        "",
        ("Samples are drawn with DDIM in pixel space with the x0 estimate clipped to [-1, 1] "
         "(sampling.clip_x0=1.0). The small UNet (32 channels) uses GroupNorm with 8 groups (model.norm_groups): "
         "with the original's 32 groups every channel is normalised alone, the model cannot predict the mean "
         "colour of the noise and the samples get strong colour casts."),
        "",
        "## Time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in seconds.items()],
        f"| total | {sum(seconds.values()):.1f} |",
        "",
        "## Figures",
        "",
        *[f"### {name}\n\n![{name}]({rel(Path(p))})\n" for name, p in figures.items()],
        "## Settings",
        "",
        "```json",
        json.dumps(dict(settings), indent=2),
        "```",
        "",
    ]
    path = out_dir / "report.md"
    write_text_atomic(path, "\n".join(md))
    log.info("report: %s (overview %s)", path, overview)
    return path
