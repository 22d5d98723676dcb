"""The demo's report: ``report.md``, ``report.json``, ``overview.png`` and the figures they show.

Figures (``figures/``): a grid of novel identities (one row per invented person), and the novelty
check (each person beside the nearest face of the model's training set); from ``evaluate.py`` the
genuine/impostor histograms and the DET curve; from the settings stage the identities per sampling
setting. ``report.json`` holds ``metrics`` (a pure function of the settings and the seed: equal on
every run on one machine), ``novelty`` (per identity), ``settings_table`` (with its timings) and
``seconds`` (wall clock per stage).
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

from cpu_demo.novelty import training_face
from testbed.faces import resize_images
from utils.atomic import write_atomic, write_json_atomic, write_text_atomic
from utils.image_io import discover_identities, read_identity, read_image

log = logging.getLogger(__name__)

FIGURES = {"identities": "figures/novel_identities.png", "novelty": "figures/novelty_check.png"}


def _montage(rows: Sequence[Sequence[np.ndarray | None]], size: int, pad: int = 2) -> np.ndarray:
    """Rows of (H, W, 3) uint8 images (None: a gap), each enlarged to ``size`` px, on a white canvas."""
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (size + pad) + pad, cols * (size + pad) + pad, 3), 255, dtype=np.uint8)
    for i, tiles in enumerate(rows):
        for j, t in enumerate(tiles):
            if t is not None:
                y, x = pad + i * (size + pad), pad + j * (size + pad)
                canvas[y : y + size, x : x + size] = resize_images([t], size)[0]
    return canvas


def _save(fig: Figure, path: Path) -> Path:
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    return path


def plot_identity_grid(samples_dir: Path, path: Path, title: str, rows: int = 8, per_row: int = 8,
                       size: int = 64) -> Path:
    """The first ``rows`` identities of the sample blocks, ``per_row`` images each: one row per invented person."""
    sources = discover_identities(samples_dir)
    names = list(sources)[:rows]
    tiles = [list(read_identity(sources[n])[:per_row]) for n in names]
    fig = Figure(figsize=(0.6 + 0.7 * per_row, 0.5 + 0.7 * len(names)), dpi=110)
    ax = fig.add_subplot()
    ax.imshow(_montage(tiles, size))
    ax.set_yticks([2 + (i + 0.5) * (size + 2) for i in range(len(names))], [f"person {n}" for n in names], fontsize=7)
    ax.set_xticks([])
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_novelty(samples_dir: Path, novelty: Mapping[str, Any], path: Path, per_row: int = 4, size: int = 64) -> Path:
    """Each identity of ``novelty["figure"]``: ``per_row`` of its images, a gap, its nearest training face, scores."""
    sources = discover_identities(samples_dir)
    by_name = {r["identity"]: r for r in novelty["identities"]}
    shown = novelty["figure"]
    tiles = [[*read_identity(sources[n])[:per_row], None, read_image(training_face(novelty, n))] for n in shown]
    fig = Figure(figsize=(8.5, 0.6 + 0.75 * len(shown)), dpi=110)
    ax = fig.add_subplot()
    ax.imshow(_montage(tiles, size))
    ax.set_yticks([2 + (i + 0.5) * (size + 2) for i in range(len(shown))], [f"person {n}" for n in shown], fontsize=7)
    ax.set_xticks([2 + (per_row / 2) * (size + 2), 2 + (per_row + 1.5) * (size + 2)],
                  ["generated images", "nearest training face"], fontsize=7)
    ax.tick_params(length=0)
    for i, n in enumerate(shown):
        r = by_name[n]
        label = f"{r['nearest_train']}: cos {r['cos']:.3f}\nown genuine {r['genuine_mean']:.3f}"
        label += "  COPY" if r["copy"] else ""
        ax.text(1.02, 1 - (i + 0.5) / len(shown), label, transform=ax.transAxes, va="center", fontsize=7)
    ax.set_title("novelty check: the invented people nearest a training face (dlib cosine)", fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.72, top=0.95, bottom=0.05)
    return _save(fig, path)


def fmt(key: str, value: Any) -> str:
    """A metric as the report prints it (rates in %)."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if key in ("eer", "fmr100", "fmr1000", "detected_share", "identity_match", "copy_share", "leakage_share",
               "centre_leak_share"):
        return f"{100 * value:.1f} %"
    return f"{value:.4f}"


METRIC_NOTES = {
    "identities": "novel identities sampled (contexts that belong to nobody)",
    "images_per_identity": "images sampled per identity",
    "detected_share": "generated images in which MTCNN finds a face",
    "generated_images": "images sampled",
    "detected": "images with a detected face (aligned)",
    "identities_evaluated": "identities with two or more detected faces",
    "images_evaluated": "their detected faces (embedded and evaluated)",
    "error_rate_definition": "how EER and FNMR at FMR are read off the scores (pyeer: as IDiff-Face reported them)",
    "eer": "equal error rate of the dlib model on the novel identities (pyeer's definition)",
    "eer_threshold": "cosine at the EER point",
    "fmr100": "FNMR at FMR 1 %",
    "fmr1000": "FNMR at FMR 0.1 %",
    "auc": "area under the ROC curve",
    "genuine_mean": "mean cosine, two images of one novel identity",
    "genuine_std": "standard deviation of the genuine scores",
    "impostor_mean": "mean cosine, images of two novel identities",
    "impostor_std": "standard deviation of the impostor scores",
    "n_genuine": "genuine pairs (all pairs of images of one identity)",
    "n_impostor": "impostor pairs (all pairs of images of two identities)",
    "identity_match": "images nearest their own identity's centre (leave-one-out)",
    "novelty_max_cos_mean": "mean over identities of the score of the nearest training face",
    "copy_share": "identities whose nearest training face scores above their own genuine mean",
    "leakage_share": "identities whose nearest training face scores above the EER threshold",
    "centre_leak_share": "identity centres with a training face above demo.fr_threshold (evaluate.py)",
}


def plot_overview(out_dir: Path, figures: Mapping[str, Path], metrics: Mapping[str, Any]) -> Path:
    """``overview.png``: the novel identities, their score histograms, the novelty check and the key numbers."""
    fig = Figure(figsize=(14, 12), dpi=100)
    grid = fig.add_gridspec(2, 2)
    for cell, key in ((grid[0, 0], "identities"), (grid[0, 1], "histograms"), (grid[1, 0], "novelty")):
        ax = fig.add_subplot(cell)
        if key in figures and Path(figures[key]).is_file():
            ax.imshow(mpimg.imread(figures[key]))
        ax.set_axis_off()
    ax = fig.add_subplot(grid[1, 1])
    ax.set_axis_off()
    shown = ("identities", "images_per_identity", "detected_share", "eer", "fmr100", "genuine_mean", "impostor_mean",
             "identity_match", "novelty_max_cos_mean", "copy_share", "leakage_share")
    lines = [f"{k:>21}: {fmt(k, metrics[k])}" for k in shown if k in metrics]
    ax.text(0, 0.9, "\n".join(lines), va="top", family="monospace", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir / "overview.png")


def check_finite(metrics: Mapping[str, Any]) -> None:
    """Raise when a numeric metric is NaN or infinite (the report would hide a broken stage)."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"demo metrics {bad} are not finite: {[metrics[k] for k in bad]}")


def _novelty_rows(novelty: Mapping[str, Any]) -> list[str]:
    """Markdown rows of the figure's identities (the nearest a training face); every identity is in report.json."""
    rows = ["| person | nearest training face | its cosine | own genuine mean | copy? |", "|---|---|---|---|---|"]
    by_name = {r["identity"]: r for r in novelty["identities"]}
    for r in (by_name[name] for name in novelty["figure"]):
        rows.append(f"| {r['identity']} | {r['nearest_train']} | {r['cos']:.3f} | {fmt('g', r['genuine_mean'])} | "
                    f"{'yes' if r['copy'] else 'no'} |")
    return rows


def write_report(
    out_dir: Path, sections: Mapping[str, Any], metrics: Mapping[str, Any], seconds: Mapping[str, float],
    figures: Mapping[str, Path],
) -> Path:
    """Write ``report.json``, ``overview.png`` and ``report.md`` into ``out_dir``; returns the Markdown path.

    Args:
        sections: ``settings`` (the demo config), ``novelty`` (novelty stage result), ``settings_table``
            (settings stage result), ``sampling`` (a line naming the sampler).
    """
    check_finite(metrics)
    novelty, table = sections["novelty"], sections["settings_table"]
    write_json_atomic(out_dir / "report.json", {
        "settings": dict(sections["settings"]), "metrics": dict(metrics), "novelty": novelty["identities"],
        "settings_table": table["settings"], "seconds": dict(seconds)})
    overview = plot_overview(out_dir, figures, metrics)

    def rel(p: str | Path) -> str:
        return Path(os.path.relpath(p, out_dir)).as_posix()

    m = metrics
    md = [
        "# IDiff-Face CPU demo: people who exist nowhere",
        "",
        (f"The shipped testbed model (32x32 pixel-space conditional diffusion, trained on 2,000 DCGAN faces of "
         f"nobody, conditioned on their dlib embeddings) is given {m['identities']} contexts that belong to nobody "
         f"(`{sections['contexts']}`) and draws {m['images_per_identity']} images of each ({sections['sampling']}). "
         "The images are enlarged, aligned with MTCNN, split into class folders, embedded with dlib and measured."),
        "",
        f"![overview]({rel(overview)})",
        "",
        "## 1. New people",
        "",
        "Each row is one invented person (the first rows of the run).",
        "",
        f"![novel identities]({rel(figures['identities'])})",
        "",
        "## 2. One person per context, each unlike the others",
        "",
        (f"MTCNN finds a face in {fmt('detected_share', m['detected_share'])} of the images. Two images of one new "
         f"person score a mean dlib cosine of {m['genuine_mean']:.3f}, images of two new people "
         f"{m['impostor_mean']:.3f}; "
         f"EER {fmt('eer', m['eer'])}, FNMR at FMR 1 % {fmt('fmr100', m['fmr100'])}, and "
         f"{fmt('identity_match', m['identity_match'])} of the images are nearest their own person's centre "
         f"(chance: {fmt('identity_match', 1 / m['identities_evaluated'])})."),
        "",
        f"![histograms]({rel(figures['histograms'])})",
        "",
        "## 3. Not copies of the training faces",
        "",
        (f"For every new person, the training face with the highest mean cosine to its images (the face is redrawn "
         f"from its DCGAN seed; the training set ships as embeddings). {fmt('copy_share', m['copy_share'])} of the "
         f"{m['identities_evaluated']} people have a training face that scores above their own mean genuine score "
         f"(a copy), {fmt('leakage_share', m['leakage_share'])} one above the EER threshold; the mean nearest score is "
         f"{m['novelty_max_cos_mean']:.3f} (own genuine mean {m['genuine_mean']:.3f}). The figure shows the "
         f"{len(novelty['figure'])} people nearest a training face (every person: `report.json`, key `novelty`)."),
        "",
        f"![novelty check]({rel(figures['novelty'])})",
        "",
        *_novelty_rows(novelty),
        "",
        "## 4. Sampling settings",
        "",
        (f"{table['identities']} novel identities x {table['images_per_identity']} images, the same contexts and "
         "per-image seeds under each setting, scored by dlib; the demo's own setting in bold. DDPM over all 1,000 steps "
         "(the original) is too slow for the demo: `python benchmarks/identity_quality.py` measures it."),
        "",
        Path(table["table"]).read_text().strip(),
        "",
        f"![settings]({rel(table['figure'])})",
        "",
        "## Key numbers",
        "",
        "| metric | value | meaning |",
        "|---|---|---|",
        *[f"| {k} | {fmt(k, v)} | {METRIC_NOTES.get(k, '')} |" for k, v in metrics.items()],
        "",
        ("Cosine similarities are between unit-length dlib descriptors; dlib's vectors are not centred, so even "
         "different people score about 0.8."),
        "",
        "## Time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in seconds.items()],
        f"| total | {sum(seconds.values()):.1f} |",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(dict(sections["settings"]), indent=2),
        "```",
        "",
    ]
    path = out_dir / "report.md"
    write_text_atomic(path, "\n".join(md))
    log.info("report: %s (overview %s)", path, overview)
    return path
