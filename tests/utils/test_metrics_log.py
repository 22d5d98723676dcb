"""utils.metrics_log: rows appended, truncated on resume, bad lines named."""
from __future__ import annotations

from pathlib import Path

import pytest

from utils.metrics_log import MetricsLog


def test_append_truncate_and_restart(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl", key="epoch")
    for epoch in range(4):
        log.append({"epoch": epoch, "loss": 3.0 - epoch})
    log.truncate(1)  # a resume from the checkpoint after epoch 1
    assert [r["epoch"] for r in log.rows()] == [0, 1]
    assert log.rows()[1]["loss"] == 2.0
    log.truncate(None)  # a fresh run
    assert log.rows() == [] and not log.path.exists()


def test_rows_of_a_missing_log_and_a_damaged_line(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert log.rows() == []
    log.append({"step": 1, "loss": 0.5})
    with open(log.path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2"):
        log.rows()
