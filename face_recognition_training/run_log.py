"""The FR training run's figure: loss, learning rate and verification accuracies against the epoch."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure


def plot_metrics(records: Sequence[dict], png_path: str | os.PathLike) -> Path:
    """Loss and learning rate (left), verification accuracies (right) of ``metrics.jsonl`` rows."""
    png_path = Path(png_path)
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [r["epoch"] + 1 for r in records]
    ax_loss.plot(epochs, [r["loss"] for r in records], marker="o", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(epochs, [r["lr"] for r in records], color="grey", linestyle="--", label="lr")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    evaluated = [r for r in records if r.get("eval")]
    names = sorted({name for r in evaluated for name in r["eval"]})
    for name in names:
        points = [(r["epoch"] + 1, r["eval"][name]["accuracy_mean"]) for r in evaluated if name in r["eval"]]
        ax_acc.plot(*zip(*points), marker=".", label=name)
    if evaluated:
        ax_acc.plot([r["epoch"] + 1 for r in evaluated], [r["mean_accuracy"] for r in evaluated],
                    color="black", linewidth=2, label="mean")
        ax_acc.legend(fontsize="small")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("verification accuracy (%)")
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    return png_path
