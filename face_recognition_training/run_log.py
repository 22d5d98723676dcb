"""Per-epoch metrics as JSON lines, and a PNG plot of them (matplotlib, Agg backend)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the headless backend)


class MetricsLog:
    """``metrics.jsonl``: one JSON object per finished epoch, keyed by ``epoch`` (0-based).

    Records carry ``loss``, ``train_accuracy``, ``lr`` and, when verification ran, ``eval``
    (``{benchmark: {"accuracy_mean", "accuracy_std", "tar_at_far"}}``) and ``mean_accuracy``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def records(self) -> list[dict]:
        """All records in file order ([] when the file does not exist)."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        try:
            return [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path} is not a JSON-lines metrics log: {err}") from None

    def truncate(self, epochs_done: int) -> None:
        """Keep only epochs ``< epochs_done`` (a resumed run re-does the epochs after its checkpoint)."""
        if not self.path.is_file():
            return
        kept = [r for r in self.records() if r.get("epoch", -1) < epochs_done]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict) -> None:
        """Add one epoch's record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self, png_path: str | os.PathLike) -> Path:
        """Loss and learning rate (left), verification accuracies (right) against the epoch."""
        records = self.records()
        png_path = Path(png_path)
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
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
        plt.close(fig)
        return png_path
