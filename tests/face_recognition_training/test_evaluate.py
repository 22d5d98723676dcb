"""The standalone scorer: a backbone state dict and a folder of .bin files -> the paper's table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from face_recognition_training.bin_reader import write_bin
from face_recognition_training.evaluate import evaluate_from_config, format_table
from models.iresnet import iresnet18
from utils.config import compose


def insightface_protocol(net: torch.nn.Module, images: np.ndarray, is_same: np.ndarray) -> tuple[float, float]:
    """insightface's verification written out: flip-sum of net((x / 255 - 0.5) / 0.5), float64 L2 normalisation,
    squared distances, thresholds 0, 0.01, ..., 3.99, "same" when distance < t, the first best threshold on the
    other 9 of 10 contiguous folds; returns the mean and np.std of the fold accuracies in percent."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0  # (2N, 3, 112, 112)
    with torch.no_grad():
        summed = net(x).double() + net(torch.flip(x, dims=[3])).double()
    emb = (summed / summed.norm(dim=1, keepdim=True)).numpy()
    dist = ((emb[0::2] - emb[1::2]) ** 2).sum(axis=1)
    grid = np.arange(0, 4, 0.01)
    accuracies = []
    for test in np.array_split(np.arange(len(dist)), 10):
        train = np.setdiff1d(np.arange(len(dist)), test)
        train_acc = [np.mean((dist[train] < t) == is_same[train]) for t in grid]
        t_best = grid[int(np.argmax(train_acc))]
        accuracies.append(np.mean((dist[test] < t_best) == is_same[test]))
    return 100 * float(np.mean(accuracies)), 100 * float(np.std(accuracies))


def test_evaluate_from_config_scores_by_insightface_protocol(tmp_path: Path, faces) -> None:
    torch.manual_seed(0)
    net = iresnet18().eval()
    torch.save(net.state_dict(), tmp_path / "backbone.pth")
    pairs, is_same = faces.verification_pairs(faces.make_identity_images(5, 3, seed=2))
    write_bin(tmp_path / "bins" / "agedb_30.bin", pairs, is_same)
    overrides = [f"evaluate_fr.checkpoint={tmp_path / 'backbone.pth'}", f"eval.bin_dir={tmp_path / 'bins'}",
                 "fr/backbone=iresnet18", "device=cpu", f"evaluate_fr.output={tmp_path / 'scores.json'}"]
    results = evaluate_from_config(compose("evaluate_fr_config", overrides))
    assert list(results) == ["agedb_30"]
    expected_mean, expected_std = insightface_protocol(net, pairs, is_same)  # same machine, same net: exact
    assert results["agedb_30"]["kfold_rule"] == "insightface"
    assert (results["agedb_30"]["accuracy_mean"], results["agedb_30"]["accuracy_std"]) == (expected_mean, expected_std)
    summary = json.loads((tmp_path / "scores.json").read_text())
    assert summary["kfold_rule"] == "insightface"
    assert summary["average_accuracy"] == results["agedb_30"]["accuracy_mean"]
    assert "AgeDB-30" in (tmp_path / "scores.md").read_text() and "insightface rule" in (tmp_path / "scores.md").read_text()
    midpoint = evaluate_from_config(compose("evaluate_fr_config", [*overrides, "eval.kfold_rule=midpoint"]))["agedb_30"]
    assert midpoint["kfold_rule"] == "midpoint"
    assert json.loads((tmp_path / "scores.json").read_text())["kfold_rule"] == "midpoint"


def test_table_in_paper_order() -> None:
    row = {"accuracy_mean": 90.0, "accuracy_std": 1.0, "tar_at_far": 50.0, "kfold_rule": "insightface"}
    table = format_table({"cplfw": row, "lfw": {**row, "accuracy_mean": 98.0}})
    header = table.splitlines()[0]
    assert header.index("LFW") < header.index("CPLFW") < header.index("Avg")
    assert "| 94.00 |" in table and "insightface rule" in table and "all pairs" in table
    assert np.isclose(float(table.splitlines()[2].split("|")[-2]), 94.0)
