"""diffusion.train_state: a checkpoint is one atomic unit (a kill at any file boundary resumes from the newest complete
one); run folders from elsewhere build only allow-listed classes."""
from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel
from diffusion.ema import EMAModel
from diffusion.generation import load_trained_model
from diffusion.safe_config import UnsafeConfigError
from diffusion.train_state import (
    CHECKPOINT_DIR,
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZATION_FILE,
    TrainingObjects,
    build_diffusion_model,
    checkpoint_files,
    has_checkpoint,
    load_training_state,
    save_training_state,
)
from models.diffusion.unet import ConditionalUNet
from utils.checkpoint import CheckpointError
from utils.distributed import DistributedContext

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CTX = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
DATA_ORDER = {"seed": 0, "n_items": 8, "global_batch": 4}
KEPT_STEPS = (3,)  # the second save also writes ema_averaged_model_3.ckpt

pytestmark = pytest.mark.usefixtures("one_thread")


def make_objects() -> TrainingObjects:
    """A tiny conditional DDPM with EMA, Adam, a cosine-restart schedule and a (disabled) scaler."""
    torch.manual_seed(0)
    unet = ConditionalUNet(input_channels=3, initial_channels=32, channel_multipliers=[1], is_attention=[False],
                           attention_head_channels=8, n_blocks_per_resolution=1, is_context_conditional=True,
                           context_input_channels=4, context_channels=32, norm_groups=8)
    model = DenoisingDiffusionProbabilisticModel(unet, T=1000)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=2)
    return TrainingObjects(model, EMAModel(model), optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))


def train_step(objects: TrainingObjects, step: int) -> None:
    """One optimisation step on data drawn from ``step`` only."""
    g = torch.Generator().manual_seed(step)
    x0, context = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 4, generator=g)
    t, eps = torch.randint(0, 1000, (4,), generator=g), torch.randn(4, 3, 4, 4, generator=g)
    objects.optimizer.zero_grad()
    objects.model(x0, context=context, t=t, eps=eps).backward()
    objects.optimizer.step()
    objects.lr_scheduler.step()
    objects.ema.step(objects.model)


def tensors_of(objects: TrainingObjects) -> dict[str, Any]:
    """A copy of everything a checkpoint restores."""
    return copy.deepcopy({"model": objects.model.state_dict(), "ema": objects.ema.averaged_model.state_dict(),
            "ema_counters": objects.ema.state_dict(), "optimizer": objects.optimizer.state_dict()["state"],
            "lr_scheduler": objects.lr_scheduler.state_dict()})


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def loaded(run_dir: Path) -> tuple[int, dict[str, Any]]:
    objects = make_objects()
    step, _ = load_training_state(run_dir, objects, DATA_ORDER, CTX)
    return step, tensors_of(objects)


def hidden_entries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir() if p.name.startswith("."))


def test_kill_at_every_file_boundary_resumes_the_newest_complete_checkpoint(
    tmp_path: Path, kill_switch: Callable[..., Any]
) -> None:
    objects = make_objects()
    for step in range(2):
        train_step(objects, step)
    run = tmp_path / "run"
    save_training_state(run, objects, 2, 0, DATA_ORDER, CTX)
    state_a = tensors_of(objects)
    train_step(objects, 2)
    state_b = tensors_of(objects)

    # count the file boundaries of one checkpoint write
    counter = kill_switch(tmp_path / "count" / CHECKPOINT_DIR, tmp_path / "count", tmp_path / "unused")
    save_training_state(tmp_path / "count", objects, 3, 0, DATA_ORDER, CTX, KEPT_STEPS)
    boundaries = len(counter.events)
    assert boundaries >= 8, counter.events  # at least a temporary and a rename per file

    resumed_steps = []
    for n in range(1, boundaries + 1):
        snapshot = tmp_path / f"killed_{n}"
        switch = kill_switch(run / CHECKPOINT_DIR, run, snapshot, kill_at=n)
        with pytest.raises(switch.killed):
            save_training_state(run, objects, 3, 0, DATA_ORDER, CTX, KEPT_STEPS)
        step, state = loaded(snapshot)
        assert step in (2, 3), n
        assert_same(state, state_b if step == 3 else state_a, f"kill before boundary {n}: {switch.events[-1]}")
        resumed_steps.append(step)
        # the next write into the killed folder succeeds and leaves no temporaries behind
        kill_switch(tmp_path / "none", run, tmp_path / "unused")
        save_training_state(snapshot, objects, 3, 0, DATA_ORDER, CTX, KEPT_STEPS)
        assert hidden_entries(snapshot) == [], n
        step, state = loaded(snapshot)
        assert step == 3
        assert_same(state, state_b)
        assert (snapshot / CHECKPOINT_DIR / "ema_averaged_model_3.ckpt").is_file()
    # once a kill finds the new checkpoint complete, every later kill does too (nothing committed is lost),
    # and a kill before the last boundary (clean-up) keeps it
    assert resumed_steps == sorted(resumed_steps) and resumed_steps[-1] == 3, resumed_steps


def test_published_layout_and_shipped_demo_checkpoint_load(tmp_path: Path) -> None:
    """A run folder of the original code (three files, optimization.ckpt with the original's four keys) and the
    shipped data/demo/checkpoint/ read as they are."""
    objects = make_objects()
    train_step(objects, 0)
    published = tmp_path / "published" / CHECKPOINT_DIR
    published.mkdir(parents=True)
    torch.save(objects.model.state_dict(), published / MODEL_FILE)
    torch.save(objects.ema.averaged_model.state_dict(), published / EMA_FILE)
    torch.save({"global_step": 1, "epoch": 0, "optimizer": objects.optimizer.state_dict(),
                "lr_scheduler": objects.lr_scheduler.state_dict()}, published / OPTIMIZATION_FILE)
    assert set(checkpoint_files(tmp_path / "published")) == {MODEL_FILE, EMA_FILE, OPTIMIZATION_FILE}
    step, state = loaded(tmp_path / "published")
    assert step == 1 and state["ema_counters"]["optimization_step"] == 1
    assert_same(state["model"], tensors_of(objects)["model"])

    shipped = PROJECT_ROOT / "data" / "demo" / "checkpoint"
    assert has_checkpoint(shipped) and sorted(checkpoint_files(shipped)) == [EMA_FILE, MODEL_FILE, OPTIMIZATION_FILE]
    model = build_diffusion_model(OmegaConf.load(shipped / ".hydra" / "config.yaml"), shipped / ".hydra" / "config.yaml")
    demo = TrainingObjects(model, EMAModel(model), torch.optim.Adam(model.parameters()), None,
                           torch.amp.GradScaler("cpu", enabled=False))
    step, _ = load_training_state(shipped, demo, {"seed": 0, "n_items": 120, "global_batch": 16}, CTX)
    assert step == torch.load(shipped / CHECKPOINT_DIR / OPTIMIZATION_FILE, weights_only=True)["global_step"] > 0


def test_missing_checkpoint_files_are_named(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_DIR).mkdir()
    torch.save({"global_step": 1, "epoch": 0, "optimizer": {}}, tmp_path / CHECKPOINT_DIR / OPTIMIZATION_FILE)
    assert has_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=f"{tmp_path / CHECKPOINT_DIR} has no model.ckpt, ema_averaged_model.ckpt"):
        load_training_state(tmp_path, make_objects(), DATA_ORDER, CTX)


class _MarkerPayload:
    """Unpickling this writes ``marker``: the stand-in for any code a hostile file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def test_hostile_run_folder_config_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    """sample.py's loader: a nested torch.load(weights_only=False) in .hydra/config.yaml is refused; nothing runs."""
    marker, payload = tmp_path / "PWNED", tmp_path / "payload.pkl"
    torch.save(_MarkerPayload(marker), payload)
    hostile = {"_target_": "torch.load", "f": str(payload), "weights_only": False}
    instantiate(OmegaConf.create(hostile))  # what hydra's instantiate does with it: the payload runs
    assert marker.is_file()
    marker.unlink()

    shipped = PROJECT_ROOT / "data" / "demo" / "checkpoint"
    run = tmp_path / "downloaded_run"
    shutil.copytree(shipped, run)
    config_file = run / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config_file)
    cfg.diffusion.eps_model = hostile
    OmegaConf.save(cfg, config_file)
    with pytest.raises(UnsafeConfigError) as err:
        load_trained_model(run, "ema", "cpu")
    message = str(err.value)
    assert str(config_file) in message and "diffusion.eps_model._target_='torch.load'" in message, message
    assert "\n" not in message and not marker.exists()

    cfg.diffusion.eps_model = OmegaConf.load(shipped / ".hydra" / "config.yaml").model
    cfg.diffusion.criterion = {"_target_": "torch.nn.MSELoss", "_partial_": True}
    OmegaConf.save(cfg, config_file)
    with pytest.raises(UnsafeConfigError, match=r"diffusion.criterion._partial_ is a special instantiation key"):
        load_trained_model(run, "ema", "cpu")
    cfg.diffusion = {"_target_": "models.diffusion.unet.ConditionalUNet"}
    OmegaConf.save(cfg, config_file)
    with pytest.raises(UnsafeConfigError, match="diffusion._target_ must be"):
        load_trained_model(run, "ema", "cpu")


def test_shipped_run_folder_still_builds_with_the_original_interpolation(tmp_path: Path) -> None:
    """The published configs write ``eps_model: ${model}``; it resolves and builds the same model as the shipped one."""
    shipped = PROJECT_ROOT / "data" / "demo" / "checkpoint"
    run = tmp_path / "run"
    shutil.copytree(shipped, run)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.diffusion.eps_model = "${model}"
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    assert "${model}" in (run / ".hydra" / "config.yaml").read_text()
    model = load_trained_model(run, "ema", "cpu")
    reference = load_trained_model(shipped, "ema", "cpu")
    assert_same(model.diffusion.state_dict(), reference.diffusion.state_dict())
