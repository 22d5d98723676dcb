"""Training loop: loss goes down on a tiny dataset, run-folder layout, exact resume after SIGKILL (also inside a
checkpoint write), DDP, NaN stop."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from diffusion.ddpm import load_diffusion_checkpoint
from diffusion.train_state import has_checkpoint
from diffusion.training import TrainingError, train
from embedding.files import save_embeddings
from models.autoencoder.vqgan import VQDecoderInterface, VQEncoderInterface
from utils.checkpoint import CheckpointError, torch_load
from utils.config import compose

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTEXT_DIM = 16

pytestmark = pytest.mark.usefixtures("one_thread")


def make_face_folder(root: Path, n: int = 32, size: int = 8, seed: int = 0) -> list[str]:
    """``n`` small structured RGB images in ``root/images`` and ``root/embeddings.npz`` (unit vectors)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    names = []
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
        image = np.stack([blob * rng.uniform(0.5, 1), xx * rng.uniform(0, 1), yy * rng.uniform(0, 1)], -1)
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"{i:05d}.png")
        names.append(f"{i:05d}")
    contexts = rng.normal(size=(n, CONTEXT_DIM)).astype(np.float32)
    save_embeddings(root / "embeddings.npz", names, contexts / np.linalg.norm(contexts, axis=1, keepdims=True))
    return names


def tiny_overrides(data: Path, steps: int, **extra: object) -> list[str]:
    """An 8x8 pixel-space run of a 2-level UNet on the CPU."""
    values = {
        "experiment": "pixel_small", "device": "cpu", "constants.image_size": 8, "constants.context_dim": CONTEXT_DIM,
        "model.initial_channels": 32, "model.channel_multipliers": "[1,1]", "model.is_attention": "[false,true]",
        "model.attention_head_channels": 16, "model.context_channels": 32,
        "dataset.images_root": str(data / "images"), "dataset.embeddings_file": str(data / "embeddings.npz"),
        "training.batch_size": 8, "training.num_workers": 0, "training.steps": steps,
        "training.steps_between_logging": 10, "training.steps_between_eval": steps,
        "training.steps_between_sampling": steps, "training.steps_of_checkpoints": f"[{steps}]",
        "training.sampling.steps": 2, "training.sampling.n_per_row": 4, "training.optimizer.lr": 2e-3,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def expected_files(run: Path, steps: int) -> list[Path]:
    ckpt = run / "checkpoints"
    return [run / ".hydra" / "config.yaml", ckpt / "model.ckpt", ckpt / "ema_averaged_model.ckpt",
            ckpt / f"ema_averaged_model_{steps}.ckpt", ckpt / "optimization.ckpt", run / "metrics.jsonl",
            run / "loss.png", run / "samples" / f"sample_{steps:06d}.png"]


def check_run_folder(run: Path, steps: int) -> None:
    """Every file exists and the checkpoints load into the model rebuilt from the saved config."""
    for path in expected_files(run, steps):
        assert path.is_file(), f"missing {path}"
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    for key in ("diffusion", "model", "constants", "latent_diffusion", "autoencoder"):
        assert key in saved
    for name in ("model.ckpt", "ema_averaged_model.ckpt", f"ema_averaged_model_{steps}.ckpt"):
        model = load_diffusion_checkpoint(instantiate(saved.diffusion), run / "checkpoints" / name)
        assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    state = torch_load(run / "checkpoints" / "optimization.ckpt")
    assert {"global_step", "epoch", "optimizer", "lr_scheduler", "ema", "rng"} <= set(state)
    assert state["global_step"] == steps


def test_pixel_training_reduces_loss_and_writes_run_folder(tmp_path: Path) -> None:
    make_face_folder(tmp_path / "data")
    steps = 200
    run = train(compose("train_config", tiny_overrides(tmp_path / "data", steps)), run_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10, steps + 1, 10))
    first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.4 * first, f"loss {first:.3f} -> {last:.3f}"
    check_run_folder(run, steps)
    state = torch_load(run / "checkpoints" / "optimization.ckpt")
    ema = torch_load(run / "checkpoints" / "ema_averaged_model.ckpt")
    live = torch_load(run / "checkpoints" / "model.ckpt")
    assert state["ema"]["optimization_step"] == steps
    assert not torch.equal(ema["eps_model.final.weight"], live["eps_model.final.weight"])  # a real average


def test_latent_training_with_tiny_random_vq(tmp_path: Path) -> None:
    make_face_folder(tmp_path / "data", size=16)
    ddconfig = {"double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    torch.manual_seed(0)
    torch.save(VQEncoderInterface(ddconfig).state_dict(), tmp_path / "enc.pt")
    torch.save(VQDecoderInterface(ddconfig, n_embed=64).state_dict(), tmp_path / "dec.pt")
    overrides = tiny_overrides(tmp_path / "data", 40, latent_diffusion="true", **{
        "paths.vq_encoder": str(tmp_path / "enc.pt"), "paths.vq_decoder": str(tmp_path / "dec.pt"),
        "autoencoder.n_embed": 64, "autoencoder.ddconfig.ch": 32, "autoencoder.ddconfig.ch_mult": "[1,2]",
        "autoencoder.ddconfig.num_res_blocks": 1, "autoencoder.ddconfig.resolution": 16, "constants.image_size": 16,
        "model.channel_multipliers": "[1]", "model.is_attention": "[true]",
        "training.latent_cache.enabled": "true", "training.latent_cache.path": str(tmp_path / "cache.pt")})
    run = train(compose("train_config", overrides), run_dir=tmp_path / "run")
    check_run_folder(run, 40)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert (tmp_path / "cache.pt").is_file()
    before = {p: p.read_bytes() for p in expected_files(run, 40)}
    with pytest.raises(CheckpointError, match="already holds a training checkpoint.*restore=true"):
        train(compose("train_config", overrides), run_dir=run)  # a fresh start must not overwrite a finished run
    assert {p: p.read_bytes() for p in expected_files(run, 40)} == before


def test_nan_loss_stops_with_checkpoint(tmp_path: Path) -> None:
    make_face_folder(tmp_path / "data")
    cfg = compose("train_config", tiny_overrides(tmp_path / "data", 50, **{"training.optimizer.lr": 1e30,
                                                                         "training.lr_scheduler": "null"}))
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step \d+; saved"):
        train(cfg, run_dir=tmp_path / "run")
    state = torch_load(tmp_path / "run" / "checkpoints" / "optimization.ckpt")
    model = torch_load(tmp_path / "run" / "checkpoints" / "model.ckpt")
    assert all(torch.isfinite(v).all() for v in model.values()), "the saved state is the last finite one"
    assert state["global_step"] < 50


RUNNER = """
import json, os, signal, sys
import torch
from diffusion.training import train
from utils.config import compose
overrides, run_dir, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
adam_step = torch.optim.Adam.step
calls = [0]
def step(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return adam_step(self, *args, **kwargs)
torch.optim.Adam.step = step
torch.set_num_threads(1)
train(compose("train_config", overrides), run_dir=run_dir)
"""


def run_training_process(overrides: list[str], run_dir: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, json.dumps(overrides), str(run_dir), str(kill_at)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_resume_after_sigkill_is_bitwise_identical(tmp_path: Path) -> None:
    make_face_folder(tmp_path / "data")
    n = 12
    overrides = tiny_overrides(tmp_path / "data", n, **{
        "training.steps_between_eval": n // 2, "training.steps_between_sampling": n // 2,
        "training.context_dropout": 0.3, "model.context_dropout_probability": 0.25, "training.grad_clip": 1.0,
        "training.num_workers": 1, "training.steps_between_logging": 2})
    straight = run_training_process(overrides, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_training_process(overrides, tmp_path / "resumed", kill_at=n // 2 + 3)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert torch_load(tmp_path / "resumed" / "checkpoints" / "optimization.ckpt")["global_step"] == n // 2
    resumed = run_training_process(overrides + ["training.checkpoint.restore=true"], tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("model.ckpt", "ema_averaged_model.ckpt"):
        a = torch_load(tmp_path / "straight" / "checkpoints" / name)
        b = torch_load(tmp_path / "resumed" / "checkpoints" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    rows = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(2, n + 1, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    make_face_folder(tmp_path / "data")
    steps = 6
    # SGD: Adam's first steps divide near-zero gradients by their own size, turning float-rounding differences
    # of the gradient all-reduce into +-lr updates; SGD keeps the comparison at float precision.
    common = tiny_overrides(tmp_path / "data", steps, **{
        "model.context_dropout_probability": 0.0, "training.context_dropout": 0.25,
        "training.optimizer._target_": "torch.optim.SGD", "training.optimizer.lr": 0.1})
    single = run_training_process([*common, "training.batch_size=8"], tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "main.py",
               *common, "training.batch_size=4", f"hydra.run.dir={tmp_path / 'ddp'}"]
    ddp = subprocess.run(env_cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    state = torch_load(tmp_path / "ddp" / "checkpoints" / "optimization.ckpt")
    assert len(state["replica_digests"]) == 2 and len(set(state["replica_digests"])) == 1
    assert state["data_order"]["global_batch"] == 8
    a = torch_load(tmp_path / "single" / "checkpoints" / "model.ckpt")
    b = torch_load(tmp_path / "ddp" / "checkpoints" / "model.ckpt")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"max weight difference {worst}"
    torch.manual_seed(0)  # train() seeds with constants.seed before building the model
    init = instantiate(compose("train_config", common).diffusion).state_dict()
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert moved > 1e-2, "the runs must have trained for the comparison to mean anything"


def _kill_overrides(data: Path) -> list[str]:
    """6 steps, a checkpoint every 2 (the one of step 4 also kept as ema_averaged_model_4.ckpt)."""
    return tiny_overrides(data, 6, **{"training.steps_between_eval": 2, "training.steps_between_sampling": 6,
                                      "training.steps_of_checkpoints": "[4]", "training.steps_between_logging": 2})


def _resume_killed(overrides: list[str], run: Path) -> Path:
    """What a user (or the demo) does after a kill: the same command, resuming when a checkpoint exists."""
    restore = "true" if has_checkpoint(run) else "false"
    return train(compose("train_config", overrides + [f"training.checkpoint.restore={restore}"]), run_dir=run)


def _assert_same_final_weights(straight: Path, resumed: Path) -> None:
    for name in ("model.ckpt", "ema_averaged_model.ckpt", "ema_averaged_model_4.ckpt"):
        a = torch_load(straight / "checkpoints" / name)
        b = torch_load(resumed / "checkpoints" / name)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == sorted(
        p.name for p in (straight / "checkpoints").iterdir())
    rows = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert rows == [2, 4, 6]


def _boundaries_of_second_checkpoint(events: list[tuple[str, str]]) -> range:
    """1-based indices of the file boundaries of the second checkpoint write (each write starts with a temporary
    folder: ``mkdtemp`` in ``checkpoints/``)."""
    starts = [i for i, (op, path) in enumerate(events) if op == "mkdtemp" and path.endswith("checkpoints")]
    assert len(starts) == 3, events
    return range(starts[1] + 1, starts[2] + 1)


def test_kill_between_checkpoint_files_resumes_bitwise(tmp_path: Path, kill_switch) -> None:
    """The audit's case: killed after the new model.ckpt is in place but before optimization.ckpt."""
    make_face_folder(tmp_path / "data")
    overrides = _kill_overrides(tmp_path / "data")
    counter = kill_switch(tmp_path / "straight" / "checkpoints", tmp_path / "straight", tmp_path / "unused")
    straight = train(compose("train_config", overrides), run_dir=tmp_path / "straight")
    second = _boundaries_of_second_checkpoint(counter.events)
    n = next(i for i in second if counter.events[i - 1][1].endswith("optimization.ckpt")
             and counter.events[i - 2][1].endswith("model.ckpt") and counter.events[i - 1][0] == "replace")
    switch = kill_switch(tmp_path / "run" / "checkpoints", tmp_path / "run", tmp_path / "killed", kill_at=n)
    with pytest.raises(switch.killed):
        train(compose("train_config", overrides), run_dir=tmp_path / "run")
    assert torch_load(tmp_path / "killed" / "checkpoints" / "optimization.ckpt")["global_step"] == 2  # not moved yet
    kill_switch(tmp_path / "none", tmp_path, tmp_path / "unused")
    _assert_same_final_weights(straight, _resume_killed(overrides, tmp_path / "killed"))


@pytest.mark.slow
def test_kill_at_every_file_boundary_of_a_checkpoint_resumes_bitwise(tmp_path: Path, kill_switch) -> None:
    make_face_folder(tmp_path / "data")
    overrides = _kill_overrides(tmp_path / "data")
    counter = kill_switch(tmp_path / "straight" / "checkpoints", tmp_path / "straight", tmp_path / "unused")
    straight = train(compose("train_config", overrides), run_dir=tmp_path / "straight")
    for n in _boundaries_of_second_checkpoint(counter.events):
        switch = kill_switch(tmp_path / f"run_{n}" / "checkpoints", tmp_path / f"run_{n}", tmp_path / f"killed_{n}",
                             kill_at=n)
        with pytest.raises(switch.killed):
            train(compose("train_config", overrides), run_dir=tmp_path / f"run_{n}")
        kill_switch(tmp_path / "none", tmp_path, tmp_path / "unused")
        _assert_same_final_weights(straight, _resume_killed(overrides, tmp_path / f"killed_{n}"))
