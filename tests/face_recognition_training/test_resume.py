"""Resume after SIGKILL: a killed and restarted CPU run ends with the same weights, bitwise; a kill between the files
of an epoch leaves them consistent after the rerun.

Both runs are subprocesses of ``python train_fr.py`` with one thread.
The config exercises every source of state: RandAugment and dropout (torch RNG, workers=0),
ElasticFace margins (torch RNG), SGD momentum, a step schedule with a milestone after the
first epoch, and the epoch-seeded sampler.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from face_recognition_training.bin_reader import write_bin
from face_recognition_training.train import train
from utils.checkpoint import torch_load
from utils.config import compose

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CKPT = "checkpoint.pt"


def _command(data: Path, out: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "train_fr.py",
        f"data.root={data}", "data.width=0", "data.depth=0", "data.augment=ra_4_16", "data.random_erasing=0.5",
        "data.num_workers=0", "fr/backbone=iresnet18", "fr/head=elastic_cosface", "fr/schedule=step",
        "fr.schedule.milestones=[1]", f"fr.schedule.max_epochs={epochs}", "train.batch_size=4", "train.base_lr=12.8",
        "train.device=cpu", "train.progress=false", "eval.bin_dir=null", f"train.output_dir={out}",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_resume_after_sigkill_is_bitwise(tmp_path: Path, faces) -> None:
    data = faces.write_class_folders(tmp_path / "data", faces.make_identity_images(4, 2, seed=0))
    epochs = 2
    reference = subprocess.Popen(_command(data, tmp_path / "ref", epochs), cwd=PROJECT_ROOT, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen(_command(data, tmp_path / "kill", epochs), cwd=PROJECT_ROOT, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "kill" / "checkpoint.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert victim.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 600 s"
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert torch_load(checkpoint)["epoch"] == 1

    resumed = subprocess.run(_command(data, tmp_path / "kill", epochs), cwd=PROJECT_ROOT, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resumed from" in resumed.stdout  # Hydra's job logging writes to stdout
    ref_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_out[-3000:]

    ref_state, res_state = torch_load(tmp_path / "ref" / CKPT), torch_load(tmp_path / "kill" / CKPT)
    assert ref_state["epoch"] == res_state["epoch"] == epochs
    for key, value in ref_state["model"].items():
        assert torch.equal(value, res_state["model"][key]), key
    for key in ("backbone.pth",):
        a, b = torch_load(tmp_path / "ref" / key), torch_load(tmp_path / "kill" / key)
        assert all(torch.equal(a[k], b[k]) for k in a)
    ref_momenta, res_momenta = ref_state["optimizer"]["state"], res_state["optimizer"]["state"]
    assert ref_momenta.keys() == res_momenta.keys()
    assert all(torch.equal(ref_momenta[k]["momentum_buffer"], res_momenta[k]["momentum_buffer"]) for k in ref_momenta)
    assert ref_state["scheduler"]["last_epoch"] == res_state["scheduler"]["last_epoch"] == epochs
    lines = [json.loads(line) for line in (tmp_path / "kill" / "metrics.jsonl").read_text().splitlines()]
    ref_lines = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(epochs))
    np.testing.assert_array_equal([r["loss"] for r in lines], [r["loss"] for r in ref_lines])
    assert (tmp_path / "kill" / "metrics.png").is_file()



def _one_epoch_run(tmp_path: Path, faces) -> list[str]:
    """One epoch of iResNet-18 with verification on a tiny lfw.bin: the epoch improves, so it writes all three
    files (checkpoint.pt, backbone.pth, backbone_best.pth), and it is the last epoch."""
    images = faces.make_identity_images(4, 5, seed=1)
    data = faces.write_class_folders(tmp_path / "data", images[:, :2])
    pairs, is_same = faces.verification_pairs(images[:, 2:])
    write_bin(tmp_path / "bins" / "lfw.bin", pairs, is_same)
    return [f"data.root={data}", "data.width=0", "data.depth=0", "data.augment=none", "data.num_workers=0",
            "fr/backbone=iresnet18", "fr/schedule=step", "fr.schedule.max_epochs=1", "train.batch_size=4",
            "train.device=cpu", "train.progress=false", f"eval.bin_dir={tmp_path / 'bins'}", "eval.benchmarks=[lfw]"]


def _assert_epoch_files_consistent(out: Path, reference: Path | None = None) -> None:
    """backbone.pth and backbone_best.pth hold the checkpoint's backbone (the only epoch is the best), and equal
    ``reference``'s (an uninterrupted run) when given."""
    state = torch_load(out / CKPT)
    assert state["epoch"] == 1 and state["early_stopping"]["best_epoch"] == 0
    backbone = {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    for name in ("backbone.pth", "backbone_best.pth"):
        saved = torch_load(out / name)
        expected = backbone if reference is None else torch_load(reference / name)
        assert saved.keys() == backbone.keys() == expected.keys(), name
        assert all(torch.equal(saved[k], backbone[k]) and torch.equal(saved[k], expected[k]) for k in saved), name
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def _kill_and_rerun(tmp_path: Path, overrides: list[str], kill_switch, n: int | Callable[[str, str], bool]) -> Path:
    tag = n if isinstance(n, int) else "at"
    run, killed = tmp_path / f"run_{tag}", tmp_path / f"killed_{tag}"
    switch = kill_switch(run, run, killed, kill_at=n)
    with pytest.raises(switch.killed):
        train(compose("fr_train_config", [*overrides, f"train.output_dir={run}"]))
    kill_switch(tmp_path / "none", tmp_path, tmp_path / "unused")
    train(compose("fr_train_config", [*overrides, f"train.output_dir={killed}"]))
    return killed


@pytest.mark.usefixtures("one_thread")
def test_kill_between_epoch_files_leaves_them_consistent(tmp_path: Path, faces, kill_switch) -> None:
    """The audit's case: the new checkpoint.pt is in place, backbone_best.pth is not (or the reverse)."""
    overrides = _one_epoch_run(tmp_path, faces)
    killed = _kill_and_rerun(tmp_path, overrides, kill_switch,
                             lambda op, path: op == "replace" and path.endswith("backbone_best.pth"))
    _assert_epoch_files_consistent(killed)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_kill_at_every_file_boundary_of_an_epoch_leaves_its_files_consistent(tmp_path: Path, faces, kill_switch) -> None:
    overrides = _one_epoch_run(tmp_path, faces)
    counter = kill_switch(tmp_path / "straight", tmp_path / "straight", tmp_path / "unused")
    train(compose("fr_train_config", [*overrides, f"train.output_dir={tmp_path / 'straight'}"]))
    assert len(counter.events) >= 6, counter.events
    for n in range(1, len(counter.events) + 1):
        _assert_epoch_files_consistent(_kill_and_rerun(tmp_path, overrides, kill_switch, n), tmp_path / "straight")
