"""The identity-quality report: a markdown settings table, a figure of novel identities, the JSON summary."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from utils.atomic import write_atomic

#: the keys of each setting in the benchmark's last JSON line (rates as fractions)
SUMMARY_KEYS = ("eer", "fmr100", "fdr", "identity_match", "detected_share", "genuine_mean", "impostor_mean",
                "novelty_max_cos_mean", "leakage_share", "diversity", "s_per_image")

#: markdown columns: (header, result key, format); "%" formats multiply by 100, "ci" is a [low, high] pair in %
COLUMNS = (
    ("ids", "n_identities_scored", "d"), ("EER %", "eer", "%"), ("EER 95% CI", "eer_ci", "ci"),
    ("FMR100 %", "fmr100", "%"), ("FDR", "fdr", ".2f"), ("id match %", "identity_match", "%"),
    ("id match 95% CI", "identity_match_ci", "ci"),
    ("detected %", "detected_share", "%"), ("genuine", "genuine_mean", ".3f"), ("impostor", "impostor_mean", ".3f"),
    ("context to train cos", "context_nearest_train_cos_mean", ".3f"), ("novelty max cos", "novelty_max_cos_mean", ".3f"), ("leakage %", "leakage_share", "%"),
    ("copies %", "copy_share", "%"), ("diversity", "diversity", ".3f"), ("pixel div.", "pixel_diversity", ".3f"),
    ("s/image", "s_per_image", ".3f"),
)


def reference_setting(names: Sequence[str]) -> str | None:
    """The original's setting: the first name containing both ``ddpm`` and ``1000``."""
    return next((n for n in names if "ddpm" in n and "1000" in n), None)


def _fmt(value: float | list[float] | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt == "ci":
        return f"{100 * value[0]:.1f}-{100 * value[1]:.1f}"
    return f"{100 * value:.1f}" if fmt == "%" else format(value, fmt)


def markdown_table(results: Mapping[str, dict], default: str, title: str = "") -> str:
    """One row per setting, the metrics of :data:`COLUMNS` plus the EER and identity-match change
    against the DDPM-1000 reference in points (absent when the run has no reference)."""
    reference = reference_setting(list(results))
    headers = ["setting", *[c[0] for c in COLUMNS]]
    if reference is not None:
        headers += [f"EER vs {reference} (pts)", f"id match vs {reference} (pts)"]
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, r in results.items():
        label = f"**{name}** (default)" if name == default else name
        cells = [label, *[_fmt(r.get(key), fmt) for _, key, fmt in COLUMNS]]
        if reference is not None:
            ref = results[reference]
            for key in ("eer", "identity_match"):
                delta = None if r.get(key) is None or ref.get(key) is None else r[key] - ref[key]
                cells.append("-" if delta is None else f"{100 * delta:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_json(results: Mapping[str, dict], default: str) -> dict:
    """``{"default": name, "settings": {name: {SUMMARY_KEYS...}}}`` (NaN as None)."""
    def clean(v: object) -> object:
        return None if isinstance(v, float) and math.isnan(v) else v
    return {"default": default,
            "settings": {n: {k: clean(r.get(k)) for k in SUMMARY_KEYS} for n, r in results.items()}}


def settings_figure(images: Mapping[str, np.ndarray], images_per_identity: int, path: str | os.PathLike,
                    n_identities: int = 8, per_identity: int = 2) -> Path:
    """PNG: one row per setting, ``n_identities`` novel identities side by side, ``per_identity`` images each.

    Args:
        images: setting name -> (M*K, H, W, 3) uint8, identity-major (K = ``images_per_identity``).
    """
    rows = []
    for name, block in images.items():
        m = len(block) // images_per_identity
        ids = range(min(n_identities, m))
        columns = [np.concatenate([block[i * images_per_identity + j] for j in range(min(per_identity, images_per_identity))],
                                  axis=0) for i in ids]  # each (per_identity*H, W, 3)
        gap = np.full((columns[0].shape[0], 2, 3), 255, np.uint8)
        rows.append((name, np.concatenate([c for col in columns for c in (col, gap)][:-1], axis=1)))
    width = max(r.shape[1] for _, r in rows)
    fig = Figure(figsize=(2 + width / 40, 0.2 + len(rows) * rows[0][1].shape[0] / 40), dpi=100)
    for k, (name, row) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, k + 1)
        ax.imshow(row)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.99, bottom=0.01, hspace=0.1)
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    return Path(path)
