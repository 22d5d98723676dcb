"""End-to-end CPU training with iResNet-18 on a tiny synthetic class-folder set.

The held-out images of every identity become an insightface-format ``lfw.bin``. The fast test
scores it before and after training (verification inside the loop would cost as much as the
training here, so only the slow test runs it every epoch); dropout is off in the fast test
because with 30 SGD steps dropout 0.4 mostly adds noise.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from face_recognition_training.bin_reader import read_bin, write_bin
from face_recognition_training.evaluate import embed_images, score_set
from face_recognition_training.train import train
from models.iresnet import load_iresnet
from utils.config import compose

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _prepare(tmp_path: Path, faces, n_ids: int, n_train: int, n_held: int) -> tuple[Path, Path]:
    images = faces.make_identity_images(n_ids, n_train + n_held, seed=1)
    data = faces.write_class_folders(tmp_path / "data", images[:, :n_train])
    pairs, is_same = faces.verification_pairs(images[:, n_train:])
    write_bin(tmp_path / "bins" / "lfw.bin", pairs, is_same)
    return data, tmp_path / "bins"


def _overrides(data: Path, bins: Path | None, out: Path, batch_size: int, lr: float) -> list[str]:
    return [f"data.root={data}", "data.width=0", "data.depth=0", "fr/backbone=iresnet18", "train.device=cpu",
            f"train.batch_size={batch_size}", f"train.base_lr={lr * 512 / batch_size}", "train.progress=false",
            f"eval.bin_dir={bins or 'null'}", "eval.benchmarks=[lfw,cfp_fp]", f"train.output_dir={out}"]


def _accuracy(backbone: torch.nn.Module, bins: Path) -> float:
    images, is_same = read_bin(bins / "lfw.bin")
    return score_set(embed_images(backbone, images, torch.device("cpu"), batch_size=64), is_same)["accuracy_mean"]


def _initial_accuracy(cfg, bins: Path) -> float:
    torch.manual_seed(cfg.train.seed)  # train() seeds the same way before building the backbone
    return _accuracy(instantiate(cfg.fr.backbone.net), bins)


def _final_accuracy(out: Path, bins: Path) -> float:
    """Accuracy of the saved ``backbone.pth``, checked equal to the checkpoint's backbone."""
    backbone = load_iresnet(out / "backbone.pth", arch="iresnet18")
    model = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(value, model[f"backbone.{key}"]) for key, value in backbone.state_dict().items())
    return _accuracy(backbone, bins)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _check_learning(records: list[dict], before: float, after: float) -> None:
    assert records[-1]["loss"] < records[0]["loss"]
    assert after >= 75.0, f"verification accuracy after training {after:.1f}% (chance 50%)"
    assert after >= before + 10.0, f"accuracy {before:.1f}% -> {after:.1f}%"


def test_training_lowers_loss_and_raises_verification(tmp_path: Path, faces) -> None:
    data, bins = _prepare(tmp_path, faces, n_ids=6, n_train=6, n_held=5)
    cfg = compose("fr_train_config", _overrides(data, None, tmp_path / "out", batch_size=6, lr=0.1) + [
        "data.augment=none", "data.num_workers=0", "fr.backbone.net.dropout=0.0",
        "fr/schedule=step", "fr.schedule.max_epochs=5"])
    before = _initial_accuracy(cfg, bins)
    record = train(cfg)
    assert record["epoch"] == 4 and "eval" not in record
    _check_learning(_records(tmp_path / "out"), before, _final_accuracy(tmp_path / "out", bins))


@pytest.mark.slow
def test_training_with_workers_plateau_and_randaugment(tmp_path: Path, faces) -> None:
    """The paper's recipe in miniature: dropout 0.4, workers, plateau schedule, verification each epoch."""
    data, bins = _prepare(tmp_path, faces, n_ids=8, n_train=8, n_held=3)
    cfg = compose("fr_train_config", _overrides(data, bins, tmp_path / "out", batch_size=8, lr=0.1) + [
        "data.augment=none", "data.num_workers=2", "fr.schedule.max_epochs=8", "fr.schedule.patience=1"])
    before = _initial_accuracy(cfg, bins)
    train(cfg)
    records = _records(tmp_path / "out")
    assert list(records[-1]["eval"]) == ["lfw"]  # cfp_fp.bin is absent and skipped
    assert (tmp_path / "out" / "metrics.png").is_file() and (tmp_path / "out" / "backbone_best.pth").is_file()
    after = _final_accuracy(tmp_path / "out", bins)
    assert after == pytest.approx(records[-1]["mean_accuracy"])
    _check_learning(records, before, after)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path, faces) -> None:
    """DDP with gloo: two processes share each epoch and rank 0 writes one checkpoint with both RNG states."""
    data, bins = _prepare(tmp_path, faces, n_ids=4, n_train=4, n_held=3)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "train_fr.py", *_overrides(data, bins, tmp_path / "out", 4, 0.1),
               "data.num_workers=0", "data.augment=ra_4_16", "fr/schedule=step", "fr.schedule.max_epochs=2"]
    run = subprocess.run(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:]
    state = torch.load(tmp_path / "out" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and len(state["rng"]) == 2
