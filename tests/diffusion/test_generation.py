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

from contexts.sources import save_original_contexts, synthetic_uniform
from diffusion.fingerprint import FINGERPRINT
from diffusion.generation import (
    MicroBatched,
    checkpoint_path,
    generate_dataset,
    guided_eps_fn,
    image_seed,
    load_trained_model,
    sample_from_config,
    sample_images,
    to_uint8,
)
from diffusion.guidance import NegativeSettings
from diffusion.samplers import per_sample_noise, sample_loop
from diffusion.sampling_settings import SamplerSettings
from embedding.files import EmbeddingSet
from tests.diffusion.tiny_runs import CONTEXT_DIM, make_run
from utils.checkpoint import CheckpointError
from utils.config import compose
from utils.image_io import read_image

PROJECT_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.mark.parametrize("output", ["block", "files"])
def test_images_do_not_depend_on_batch_size_order_or_shards(tmp_path: Path, run_dir: Path, output: str) -> None:
    model = load_trained_model(run_dir)
    contexts = synthetic_uniform(3, CONTEXT_DIM, seed=1)
    kwargs = dict(n_images=5, seed=7, settings=SamplerSettings(micro_batch=4), output=output)
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


#: clip_x0 = 1.0 as for every pixel-space run; without it this random model saturates 99.7 % of the pixels
SETTINGS = {
    "ddpm": SamplerSettings(clip_x0=1.0, micro_batch=4),
    "ddim": SamplerSettings(sampler="ddim", steps=5, eta=0.5, clip_x0=1.0, micro_batch=4),
    "dpmpp_2m": SamplerSettings(sampler="dpmpp_2m", steps=4, timestep_spacing="trailing", clip_x0=1.0, micro_batch=4),
}


def written_out_loop(model, seeds, settings: SamplerSettings, eps_fn) -> np.ndarray:
    """Sampling as documented, step by step: x_T and every noise draw from the image's own generator."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    sampler = settings.build_sampler(model.diffusion)
    sampler.reset()
    x = per_sample_noise(generators, model.latent_size, "cpu")
    for t in sampler.timesteps:
        noise = per_sample_noise(generators, model.latent_size, "cpu") if sampler.needs_noise(t) else None
        x = sampler.step(eps_fn(x, torch.full((len(x),), t, dtype=torch.long)), t, x, noise)
    return to_uint8(x)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_guidance_one_is_the_plain_conditional_output_bitwise(run_dir: Path, name: str) -> None:
    """w = 1 (and negative scale 0 with negatives given) samples exactly eps_model(x_t, t, context)."""
    model = load_trained_model(run_dir)
    context = torch.from_numpy(synthetic_uniform(4, CONTEXT_DIM, seed=2).embeddings)
    negative = torch.from_numpy(synthetic_uniform(4, CONTEXT_DIM, seed=3).embeddings)
    seeds = [11, 12, 13, 14]
    settings = SETTINGS[name]
    eps_model = MicroBatched(model.diffusion.eps_model, 4)
    plain = written_out_loop(model, seeds, settings, lambda x, t: eps_model(x, t, context))
    assert np.array_equal(sample_images(model, context, seeds, settings), plain)
    unused = SamplerSettings(**{**settings.__dict__, "negative": NegativeSettings("close", 0.0)})
    assert np.array_equal(sample_images(model, context, seeds, unused, negative), plain)
    guided = SamplerSettings(**{**settings.__dict__, "guidance_scale": 3.0})
    assert np.abs(sample_images(model, context, seeds, guided).astype(int) - plain).mean() > 4  # measured 8.4-10


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
def test_guidance_and_negative_values(run_dir: Path, name: str) -> None:
    """w = 2, s = 0.5 against (1 - w) eps(x, empty) + (w + s) eps(x, c) - s eps(x, c_neg) with three separate
    model calls: the same rows per call, so only the order of the sums differs (float32 rounding)."""
    model = load_trained_model(run_dir)
    context = torch.from_numpy(synthetic_uniform(4, CONTEXT_DIM, seed=2).embeddings)
    negative = torch.from_numpy(synthetic_uniform(4, CONTEXT_DIM, seed=3).embeddings)
    seeds = [11, 12, 13, 14]
    settings = SamplerSettings(**{**SETTINGS[name].__dict__, "guidance_scale": 2.0,
                                  "negative": NegativeSettings("file", 0.5, "unused-here.npz")})
    eps_model = MicroBatched(model.diffusion.eps_model, 4)
    empty = torch.ones(4, dtype=torch.bool)

    def reference(x, t):
        return (-1.0 * eps_model(x, t, context, empty) + 2.5 * eps_model(x, t, context)
                - 0.5 * eps_model(x, t, negative))

    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([9, 6, 3, 0])
    torch.testing.assert_close(guided_eps_fn(model, context, settings, negative)(x, t), reference(x, t),
                               atol=1e-5, rtol=1e-5)
    ours = sample_images(model, context, seeds, settings, negative).astype(int)
    expected = written_out_loop(model, seeds, settings, reference).astype(int)
    assert np.abs(ours - expected).max() <= 1 and (ours == expected).mean() > 0.99
    plain = sample_images(model, context, seeds, SETTINGS[name]).astype(int)
    assert np.abs(ours - plain).mean() > 4  # measured 7.0
    with pytest.raises(ValueError, match=r"sampling.negative.mode=file needs negative_context of shape \(4, 128\)"):
        sample_images(model, context, seeds, settings)


def test_dataset_files_hold_the_sampled_values(tmp_path: Path, run_dir: Path) -> None:
    """DDIM + guidance + Close-Neg through generate_dataset: each file equals sample_images of its seed with
    the negative a brute-force argmax of cosine similarity picks."""
    model = load_trained_model(run_dir)
    contexts = synthetic_uniform(3, CONTEXT_DIM, seed=6)
    settings = SamplerSettings(sampler="ddim", steps=4, guidance_scale=1.5, negative=NegativeSettings("close", 0.5),
                               micro_batch=4)
    generate_dataset(model, contexts.names, contexts.embeddings, tmp_path, 2, settings, seed=3, batch_size=4,
                     output="files")
    x = torch.from_numpy(contexts.embeddings).double()
    cosine = (x @ x.T) / (x.norm(dim=1, keepdim=True) * x.norm(dim=1))
    closest = cosine.fill_diagonal_(-2).argmax(dim=1)
    for i, name in enumerate(contexts.names):
        for k in range(2):
            row = torch.from_numpy(contexts.embeddings[i : i + 1])
            expected = sample_images(model, row, [image_seed(3, name, k)], settings,
                                     torch.from_numpy(contexts.embeddings[closest[i] : closest[i] + 1]))[0]
            assert np.array_equal(read_image(tmp_path / name / f"{k}.png"), expected)


@pytest.mark.parametrize("amp, tolerance", [("bfloat16", 0.03), ("float16", 0.005)])
def test_cpu_autocast_is_close_to_float32(run_dir: Path, amp: str, tolerance: float) -> None:
    """Autocast on the CPU: relative (Frobenius) error of eps and of a 5-step DDIM x_0 against float32.

    Measured on an Intel Xeon: bf16 eps 0.011, x_0 0.005; fp16 eps 0.0014, x_0 0.0006 (bf16 keeps 8
    significant bits, fp16 11); the tolerances leave 3x for other CPUs' kernels.
    """
    model = load_trained_model(run_dir)
    context = torch.from_numpy(synthetic_uniform(4, CONTEXT_DIM, seed=2).embeddings)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([9, 5, 2, 0])
    settings = SamplerSettings(sampler="ddim", steps=5, micro_batch=4)
    low = SamplerSettings(**{**settings.__dict__, "amp": amp})

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.float() - b).norm() / b.norm()).item()

    eps_low, eps_fp32 = guided_eps_fn(model, context, low)(x, t), guided_eps_fn(model, context, settings)(x, t)
    assert eps_low.dtype == getattr(torch, amp) and 1e-4 < relative(eps_low, eps_fp32) < tolerance
    sampler = settings.build_sampler(model.diffusion)
    x_0 = sample_loop(guided_eps_fn(model, context, settings), sampler, x)
    x_0_low = sample_loop(guided_eps_fn(model, context, low), sampler, x)
    assert x_0_low.dtype == torch.float32 and relative(x_0_low, x_0) < tolerance
    assert sample_images(model, context, [1, 2, 3, 4], low).shape == (4, 16, 16, 3)


def test_unsupported_autocast_is_refused(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_trained_model(run_dir)
    context = torch.from_numpy(synthetic_uniform(1, CONTEXT_DIM).embeddings)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args: False)  # what torch does for a dtype it lacks
    with pytest.raises(ValueError, match=r"sampling.amp=float16 is not supported on cpu by torch .*; use bfloat16"):
        sample_images(model, context, [0], SamplerSettings(amp="float16", micro_batch=1))


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


def test_sample_py_settings_reach_the_images(tmp_path: Path, run_dir: Path) -> None:
    """sample.py's sampling keys give the files of generate_dataset with the same SamplerSettings, and Far-Neg
    is not Close-Neg."""
    contexts = synthetic_uniform(3, CONTEXT_DIM, seed=8)
    contexts_file = save_original_contexts(tmp_path / "ids.npy", contexts)
    keys = ["sampling.sampler=dpmpp_2m", "sampling.steps=4", "sampling.timestep_spacing=trailing",
            "sampling.clip_x0=1.0", "sampling.guidance_scale=1.5", "sampling.negative.mode=far",
            "sampling.output=files"]
    sample_from_config(compose("sample_config", sample_overrides(run_dir, contexts_file, tmp_path / "cfg", 2) + keys))
    model = load_trained_model(run_dir)
    settings = SamplerSettings(sampler="dpmpp_2m", steps=4, timestep_spacing="trailing", clip_x0=1.0,
                               guidance_scale=1.5, negative=NegativeSettings("far"), micro_batch=4,
                               amp="bfloat16")  # sample.py's default autocast reaches the images too
    for mode in ("far", "close"):
        chosen = SamplerSettings(**{**settings.__dict__, "negative": NegativeSettings(mode)})
        generate_dataset(model, contexts.names, contexts.embeddings, tmp_path / mode, 2, chosen, batch_size=4,
                         output="files")
    from_config = read_all(tmp_path / "cfg" / "tiny-run" / "ids")
    assert from_config.pop(FINGERPRINT)
    assert len(from_config) == 6 and from_config == read_all(tmp_path / "far") != read_all(tmp_path / "close")


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
    assert sorted(reference) == sorted([FINGERPRINT] + [f"{name}.grid2x2.png" for name in contexts.names])
