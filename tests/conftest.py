"""Shared pytest fixtures: the reference facts in ``tests/fixtures/reference``, one-thread torch, the real photos,
shrunk real configs, a kill switch for file boundaries."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from utils.config import CONFIG_DIR, compose

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: reference data shipped with the project (each sub-folder says where its numbers come from)
FIXTURES_DIR = PROJECT_ROOT / "tests" / "fixtures"
#: numbers measured from the original code (``fixtures/*.pt``) and the published checkpoints' key
#: layouts (``manifests/*.json``), each folder with an ``INDEX.json``
REFERENCE_DIR = FIXTURES_DIR / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The folder with ``manifests/`` and ``fixtures/`` made with the original code (part of the project)."""
    return REFERENCE_DIR


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tiny models: on a shared 2-core machine two OpenMP threads oversubscribe
    the cores and make small steps up to 10x slower. Use with ``pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_REAL_FILE_OPERATIONS = (tempfile.mkstemp, tempfile.mkdtemp, os.replace, os.rmdir)


class Killed(BaseException):
    """A simulated ``kill -9``: a BaseException, so no ``except Exception`` of the code under test catches it."""


@dataclass
class KillSwitch:
    """Simulate a ``kill -9`` at a file boundary under ``watch``, deterministically.

    Every file boundary under ``watch`` is counted: the creation of a temporary file or folder
    (``tempfile.mkstemp`` / ``mkdtemp``), each rename (``os.replace``) and each folder removal
    (``os.rmdir``). Just before the ``kill_at``-th one (1-based; or the first for which
    ``kill_at(operation, path)`` is true), ``root`` is copied to ``snapshot`` as it is at that
    instant, which is what a ``kill -9`` would leave (no clean-up handler has run), and
    :class:`Killed` is raised. ``events`` lists ``(operation, path)`` of what was counted.
    """

    killed: ClassVar[type[BaseException]] = Killed
    watch: Path
    root: Path
    snapshot: Path
    kill_at: int | Callable[[str, str], bool] | None = None
    events: list[tuple[str, str]] = field(default_factory=list)

    def _event(self, operation: str, path: str | os.PathLike) -> None:
        if not str(path).startswith(str(self.watch)):
            return
        self.events.append((operation, str(path)))
        due = self.kill_at(operation, str(path)) if callable(self.kill_at) else len(self.events) == self.kill_at
        if due:
            shutil.copytree(self.root, self.snapshot, symlinks=True)
            raise Killed(f"killed before {operation} {path}")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> KillSwitch:
        """Patch the four operations for the rest of the test (``monkeypatch`` undoes it)."""
        real_mkstemp, real_mkdtemp, real_replace, real_rmdir = _REAL_FILE_OPERATIONS

        def mkstemp(*args: Any, **kwargs: Any) -> Any:
            self._event("mkstemp", kwargs.get("dir", ""))
            return real_mkstemp(*args, **kwargs)

        def mkdtemp(*args: Any, **kwargs: Any) -> Any:
            self._event("mkdtemp", kwargs.get("dir", ""))
            return real_mkdtemp(*args, **kwargs)

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            self._event("replace", src)
            real_replace(src, dst, *args, **kwargs)

        def rmdir(path: Any, *args: Any, **kwargs: Any) -> None:
            self._event("rmdir", path)
            real_rmdir(path, *args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rmdir", rmdir)
        return self


@pytest.fixture
def kill_switch(monkeypatch: pytest.MonkeyPatch) -> Callable[..., KillSwitch]:
    """``kill_switch(watch, root, snapshot, kill_at=None)``: an installed :class:`KillSwitch` (a new one
    replaces the previous); ``kill_at=None`` only counts."""

    def arm(watch: Path, root: Path, snapshot: Path, kill_at: int | Callable[[str, str], bool] | None = None) -> KillSwitch:
        return KillSwitch(Path(watch), Path(root), Path(snapshot), kill_at).install(monkeypatch)

    return arm


#: Every root config (``configs/<name>.yaml``, one per script).
ROOT_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*_config.yaml"))

#: Per root: overrides that shrink the real config to a CPU job of seconds (as lightning-hydra-template's
#: conftest does): tiny models and sizes, no worker processes, no progress bars.
SHRINK: dict[str, list[str]] = {
    "train_config": [
        "experiment=pixel_small", "device=cpu", "constants.image_size=8", "constants.context_dim=32",
        "model.initial_channels=16", "model.channel_multipliers=[1,1]", "model.is_attention=[false,true]",
        "model.attention_head_channels=8", "model.context_channels=32", "model.norm_groups=4", "diffusion.T=10",
        "training.batch_size=4", "training.num_workers=0", "training.steps=2", "training.steps_between_logging=1",
        "training.steps_between_eval=2", "training.steps_between_sampling=2", "training.steps_of_checkpoints=[]",
        "training.sampling.steps=2", "training.sampling.n_per_row=2",
    ],
    "fr_train_config": [
        "train.device=cpu", "fr/backbone=iresnet18", "fr/schedule=step", "fr.schedule.max_epochs=1",
        "data.width=0", "data.depth=0", "data.num_workers=0", "train.batch_size=4", "train.progress=false",
        "eval.bin_dir=null",
    ],
    "evaluate_fr_config": ["device=cpu", "fr/backbone=iresnet18", "eval.batch_size=8"],
    "sample_config": [
        "device=cpu", "sampling.n_contexts=2", "sampling.n_samples_per_context=2", "sampling.sampler=ddim",
        "sampling.steps=2", "sampling.batch_size=4", "sampling.micro_batch=4",
    ],
    "contexts_config": ["device=cpu", "contexts.n=4", "contexts.dim=8"],
    "align_config": ["device=cpu", "align.batch_size=4"],
    "encode_config": ["device=cpu", "fr_backend.batch_size=4", "encode.identities_per_shard=2"],
    "extract_embeddings_config": ["device=cpu", "batch_size=4", "num_workers=0"],
    "demo_config": ["device=cpu", "demo.fast=true"],
}


@pytest.fixture
def shrunk_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make(root, *overrides)``: the real ``configs/<root>.yaml``, shrunk (:data:`SHRINK`), every path under tmp_path."""

    def make(root: str, *overrides: str) -> DictConfig:
        paths = [f"paths.{key}_root={tmp_path / key}" for key in ("data", "weights", "output")]
        return compose(root, [*paths, *SHRINK.get(root, []), *overrides])

    return make


@pytest.fixture(scope="session")
def real_photos() -> dict[str, np.ndarray]:
    """Every real full-face photo the project and its dependencies ship, (H, W, 3) uint8 RGB by name.

    The 5 demo crops (128x128; Obama x3, Biden, Collins: ``data/demo/SOURCES.md``), scikit-image's
    astronaut (Eileen Collins, 512x512) and matplotlib's Grace Hopper (600x512).
    """
    from matplotlib.cbook import get_sample_data
    from PIL import Image
    from skimage.data import astronaut

    faces = sorted((PROJECT_ROOT / "data" / "demo" / "faces").glob("*.png"))
    photos = {path.stem: np.asarray(Image.open(path).convert("RGB")) for path in faces}
    photos["astronaut"] = astronaut()
    with get_sample_data("grace_hopper.jpg") as file:
        photos["grace_hopper"] = np.asarray(Image.open(file).convert("RGB"))
    return photos


def write_random_run(run_dir: Path, cfg: dict) -> Path:
    """A run folder as ``main.py`` leaves it: ``.hydra/config.yaml`` = ``cfg`` (``model``, ``diffusion``, ...) and
    ``checkpoints/ema_averaged_model.ckpt`` of its model, seeded and moved off its zero-initialised layers."""
    cfg = OmegaConf.create(cfg)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    torch.manual_seed(0)
    ddpm = instantiate(cfg.diffusion)
    with torch.no_grad():
        for p in ddpm.eps_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    (run_dir / "checkpoints").mkdir()
    torch.save(ddpm.state_dict(), run_dir / "checkpoints" / "ema_averaged_model.ckpt")
    return run_dir

