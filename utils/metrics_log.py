"""A run's metrics as JSON lines: one object per logging interval, appended and flushed at once.

Rows carry a monotone key (``step`` for diffusion training, ``epoch`` for FR training). A resumed run
first truncates the rows after the point its checkpoint holds, so the log reads like an
uninterrupted run.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.atomic import write_text_atomic


class MetricsLog:
    """``path``: the JSON-lines file; ``key``: the row field that orders rows (``step`` or ``epoch``)."""

    def __init__(self, path: str | os.PathLike, key: str = "step") -> None:
        self.path = Path(path)
        self.key = key

    def rows(self) -> list[dict[str, Any]]:
        """All rows in file order ([] when the file does not exist)."""
        if not self.path.is_file():
            return []
        rows = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{self.path} line {number} is not a JSON object: {err}") from None
        return rows

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row (a killed run keeps every row written before)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(row)) + "\n")

    def truncate(self, last: int | None) -> None:
        """Keep the rows whose key is at most ``last``; ``None`` starts the log afresh."""
        if last is None:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            kept = [r for r in self.rows() if r.get(self.key, last + 1) <= last]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
