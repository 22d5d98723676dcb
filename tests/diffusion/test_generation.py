"""diffusion.generation: run-folder loading, per-image seeds, batch/shard invariance, resume after SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from contexts.sources import save_original_contexts, synthetic_uniform
from diffusion.generation import (
    MicroBatched,
    checkpoint_path,
    generate_dataset,
    image_seed,
    load_trained_model,
    resolve_shard,
    sample_from_config,
)
from embedding.files import EmbeddingSet
from utils.checkpoint import CheckpointError
from utils.config import compose

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTEXT_DIM = 128

pytestmark = pytest.mark.usefixtures("one_thread")


def make_run(run_dir: Path, T: int = 10, image_size: int = 16, published: bool = False) -> Path:
    """A pixel-space run folder with a tiny random ConditionalUNet (the layout of main.py and the release)."""
    model = {
        "_target_": "models.diffusion.unet.ConditionalUNet", "input_channels": 3, "initial_channels": 32,
        "channel_multipliers": [1, 1], "is_attention": [False, True], "attention_heads": -1,
        "attention_head_channels": 32, "n_blocks_per_resolution": 1, "condition_type": "CA",
        "is_context_conditional": True, "n_context_classes": 0, "context_input_channels": CONTEXT_DIM,
        "context_channels": 32, "learn_empty_context": False, "context_dropout_probability": 0.25,
    }
    constants = {"image_size": image_size, "input_channels": 3}
    if not published:  # the release's configs have no constants.context_dim
        constants["context_dim"] = CONTEXT_DIM
    cfg = OmegaConf.create({
        "latent_diffusion": False, "constants": constants, "model": model,
        "diffusion": {"_target_": "diffusion.ddpm.DenoisingDiffusionProbabilisticModel", "eps_model": "${model}", "T": T},
    })
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    torch.manual_seed(0)
    from hydra.utils import instantiate

    ddpm = instantiate(cfg.diffusion)
    with torch.no_grad():
        for p in ddpm.eps_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    (run_dir / "checkpoints").mkdir()
    for name in ("ema_averaged_model.ckpt", "model.ckpt", "ema_averaged_model_100.ckpt"):
        torch.save(ddpm.state_dict(), run_dir / "checkpoints" / name)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "tiny-run")


def read_all(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_checkpoint_names(tmp_path: Path) -> None:
    assert checkpoint_path(tmp_path, "ema").name == "ema_averaged_model.ckpt"
    assert checkpoint_path(tmp_path, "raw").name == "model.ckpt"
    assert checkpoint_path(tmp_path, 100000).name == "ema_averaged_model_100000.ckpt"
    with pytest.raises(ValueError, match="checkpoint.which"):
        checkpoint_path(tmp_path, "best")


def test_load_published_layout_falls_back_to_context_input_channels(tmp_path: Path) -> None:
    run = make_run(tmp_path / "published", published=True)
    for which in ("ema", "raw", "100"):
        model = load_trained_model(run, which)
        assert model.context_dim == CONTEXT_DIM and model.latent_size == (3, 16, 16) and model.decoder is None
        assert not model.diffusion.training


def test_missing_checkpoint_folder_is_one_clear_line(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a folder") as err:
        load_trained_model(tmp_path / "nope")
    assert "\n" not in str(err.value)
    (tmp_path / "empty" / ".hydra").mkdir(parents=True)
    (tmp_path / "empty" / ".hydra" / "config.yaml").write_text((run_dir / ".hydra" / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="no checkpoints/ folder") as err:
        load_trained_model(tmp_path / "empty")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_trained_model(run_dir, 5)


def test_microbatched_matches_module_for_any_batch() -> None:
    module = torch.nn.Linear(4, 3)
    wrapped = MicroBatched(module, 4)
    x = torch.randn(11, 4)
    torch.testing.assert_close(wrapped(x), module(x))


def test_image_seed_is_stable_and_distinct() -> None:
    seeds = {image_seed(42, name, k) for name in ("0", "1", "10") for k in range(50)}
    assert len(seeds) == 150 and image_seed(42, "7", 3) == image_seed(42, "7", 3) != image_seed(43, "7", 3)


def test_resolve_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_shard(1, 4) == (1, 4)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_shard() == (2, 3)
    with pytest.raises(ValueError, match="shard index"):
        resolve_shard(4, 4)
    with pytest.raises(ValueError, match="both"):
        resolve_shard(1, None)


@pytest.mark.parametrize("output", ["block", "files"])
def test_images_do_not_depend_on_batch_size_order_or_shards(tmp_path: Path, run_dir: Path, output: str) -> None:
    model = load_trained_model(run_dir)
    contexts = synthetic_uniform(3, CONTEXT_DIM, seed=1)
    kwargs = dict(n_images=5, seed=7, micro_batch=4, sampler="ddpm", output=output)
    generate_dataset(model, contexts.names, contexts.embeddings, tmp_path / "b1", batch_size=1, **kwargs)
    summary = generate_dataset(model, contexts.names, contexts.embeddings, tmp_path / "b8", batch_size=8, **kwargs)
    for index in (1, 0):  # two shards, in reverse order
        generate_dataset(model, contexts.names, contexts.embeddings, tmp_path / "sharded", batch_size=8,
                         shard=(index, 2), **kwargs)
    reference = read_all(tmp_path / "b1")
    assert len(reference) == (3 if output == "block" else 15)
    assert read_all(tmp_path / "b8") == reference
    assert read_all(tmp_path / "sharded") == reference
    assert summary.written == 3 and summary.images == 15
    again = generate_dataset(model, contexts.names, contexts.embeddings, tmp_path / "b8", batch_size=8, **kwargs)
    assert again.skipped == 3 and again.images == 0


def test_ddim_and_guidance_run(tmp_path: Path, run_dir: Path) -> None:
    model = load_trained_model(run_dir)
    contexts = synthetic_uniform(2, CONTEXT_DIM)
    generate_dataset(model, contexts.names, contexts.embeddings, tmp_path, n_images=3, batch_size=4, micro_batch=4,
                     sampler="ddim", steps=5, guidance_scale=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.grid1x3.png", "1.grid1x3.png"]


def sample_overrides(run: Path, contexts_file: Path, out_dir: Path, n_images: int = 4) -> list[str]:
    return [
        f"checkpoint.path={run}", f"sampling.contexts_file={contexts_file}", f"sampling.out_dir={out_dir}",
        "sampling.n_contexts=null", f"sampling.n_samples_per_context={n_images}", "sampling.batch_size=4",
        "sampling.micro_batch=4", "device=cpu",
    ]


def test_contexts_of_wrong_dimension_is_one_clear_line(tmp_path: Path, run_dir: Path) -> None:
    wrong = save_original_contexts(tmp_path / "wrong.npy", synthetic_uniform(2, 64))
    cfg = compose("sample_config", sample_overrides(run_dir, wrong, tmp_path / "out"))
    with pytest.raises(ValueError, match=r"wrong\.npy holds 64-d contexts .* expects 128-d") as err:
        sample_from_config(cfg)
    assert "\n" not in str(err.value)


def test_resume_after_sigkill_gives_the_same_files(tmp_path: Path) -> None:
    run = make_run(tmp_path / "slow-run", T=80)
    contexts = synthetic_uniform(5, CONTEXT_DIM, seed=3)
    contexts_file = save_original_contexts(tmp_path / "ids.npy", EmbeddingSet(contexts.names, contexts.embeddings))
    overrides = sample_overrides(run, contexts_file, tmp_path / "killed")
    out = tmp_path / "killed" / "slow-run" / "ids"
    command = [sys.executable, str(PROJECT_ROOT / "sample.py"), *overrides]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}  # as one_thread()
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.png")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = list(out.glob("*.png"))
    assert 0 < len(done_before) < 5

    sample_from_config(compose("sample_config", sample_overrides(run, contexts_file, tmp_path / "whole")))
    reference = read_all(tmp_path / "whole" / "slow-run" / "ids")
    for path in done_before:  # whatever has a final name is complete and final
        assert path.read_bytes() == reference[path.name]
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(done_before)} already done" in resumed.stdout
    assert read_all(out) == reference  # no temporaries left either
    assert len(reference) == 5 and np.all([name.endswith(".grid2x2.png") for name in reference])
