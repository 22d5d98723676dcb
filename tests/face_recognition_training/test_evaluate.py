"""The standalone scorer: a backbone state dict and a folder of .bin files -> the paper's table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from face_recognition_training.bin_reader import write_bin
from face_recognition_training.evaluate import evaluate_from_config, format_table
from models.iresnet import iresnet18
from utils.config import compose


def test_evaluate_from_config_writes_table(tmp_path: Path, faces) -> None:
    torch.manual_seed(0)
    torch.save(iresnet18().state_dict(), tmp_path / "backbone.pth")
    pairs, is_same = faces.verification_pairs(faces.make_identity_images(5, 3, seed=2))
    write_bin(tmp_path / "bins" / "agedb_30.bin", pairs, is_same)
    results = evaluate_from_config(compose("evaluate_fr_config", [
        f"evaluate_fr.checkpoint={tmp_path / 'backbone.pth'}", f"eval.bin_dir={tmp_path / 'bins'}",
        "fr/backbone=iresnet18", "device=cpu", f"evaluate_fr.output={tmp_path / 'scores.json'}"]))
    assert list(results) == ["agedb_30"]
    assert 0.0 <= results["agedb_30"]["accuracy_mean"] <= 100.0
    summary = json.loads((tmp_path / "scores.json").read_text())
    assert summary["average_accuracy"] == pytest.approx(results["agedb_30"]["accuracy_mean"])
    assert "AgeDB-30" in (tmp_path / "scores.md").read_text()


def test_table_in_paper_order() -> None:
    row = {"accuracy_mean": 90.0, "accuracy_std": 1.0, "tar_at_far": 50.0}
    table = format_table({"cplfw": row, "lfw": {**row, "accuracy_mean": 98.0}})
    header = table.splitlines()[0]
    assert header.index("LFW") < header.index("CPLFW") < header.index("Avg")
    assert "| 94.00 |" in table
    assert np.isclose(float(table.splitlines()[2].split("|")[-2]), 94.0)
