"""testbed.quality and benchmarks/identity_quality.py: one setting sampled, embedded, scored and stored."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import diffusion.generation as generation
from alignment.aligner import FaceAligner
from diffusion.generation import image_seed, load_trained_model, sample_images, to_uint8
from diffusion.sampling_settings import SamplerSettings
from embedding.backends import DlibBackend
from embedding.files import save_embeddings
from models.dcgan import generate_faces, load_dcgan_generator
from testbed.faces import embed_faces, resize_images
from testbed.quality import QualityRun, run_setting, sample_setting
from testbed.report import SUMMARY_KEYS
from testbed.settings import resolve_settings
from tests.conftest import write_random_run
from utils.config import compose
from utils.image_io import save_png_atomic

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def make_run(run_dir: Path) -> Path:
    """A run folder with a tiny random pixel-space UNet (T = 8) taking 128-d contexts."""
    model = {"_target_": "models.diffusion.unet.ConditionalUNet", "input_channels": 3, "initial_channels": 32,
             "channel_multipliers": [1, 1], "is_attention": [False, True], "attention_heads": -1,
             "attention_head_channels": 32, "n_blocks_per_resolution": 1, "condition_type": "CA",
             "is_context_conditional": True, "context_input_channels": 128, "context_channels": 32, "norm_groups": 8}
    return write_random_run(run_dir, {
        "latent_diffusion": False, "constants": {"image_size": 32, "input_channels": 3, "context_dim": 128},
        "model": model, "diffusion": {"_target_": "diffusion.ddpm.DenoisingDiffusionProbabilisticModel",
                                      "eps_model": "${model}", "T": 8}})


@pytest.fixture(scope="module")
def testbed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three held-out DCGAN faces (32 px) with their dlib embeddings, and up to four other faces as training set."""
    out = tmp_path_factory.mktemp("tb")
    generator = load_dcgan_generator(ROOT / "data" / "testbed" / "dcgan" / "netG_digiface.pt")
    aligner, backend = FaceAligner(device="cpu", pad=0.2), DlibBackend(device="cpu")
    for split, seeds in (("holdout", range(1000000, 1000006)), ("train", range(0, 6))):
        faces = resize_images(to_uint8(generate_faces(generator, list(seeds))), 32)
        result = embed_faces(faces, aligner, backend)
        kept = [(s, f) for s, f, d in zip(seeds, faces, result.detected) if d][: 3 if split == "holdout" else 4]
        for s, face in kept:
            save_png_atomic(face, out / split / f"{s:07d}.png")
        save_embeddings(out / f"{split}_dlib.npz", [f"{s:07d}" for s, _ in kept],
                        result.embeddings[[i for i, d in enumerate(result.detected) if d][: len(kept)]])
    make_run(out / "run")
    return out


def faces_of_contexts(testbed_dir: Path, calls: list[int]):
    """A stand-in for sample_images that 'generates' the held-out face whose embedding is the context,
    changed by +-3 grey levels of noise drawn from the image's seed: a model with perfect identities."""
    from embedding.files import load_embeddings
    from utils.image_io import read_image

    holdout = load_embeddings(testbed_dir / "holdout_dlib.npz")
    faces = [read_image(testbed_dir / "holdout" / f"{n}.png").astype(int) for n in holdout.names]

    def fake(model, context, seeds, *args, **kwargs):
        calls.append(len(seeds))
        rows = [int(np.argmax(holdout.embeddings @ c.numpy())) for c in context]
        return np.stack([np.clip(faces[r] + np.random.default_rng(s).integers(-3, 4, faces[r].shape), 0, 255)
                         for r, s in zip(rows, seeds)]).astype(np.uint8)
    return fake


def quality_config(testbed_dir: Path, out: Path, m: int = 3, k: int = 2):
    return compose("testbed_config", [
        "device=cpu", f"build.output_dir={testbed_dir}", f"quality.checkpoint={testbed_dir / 'run'}",
        f"quality.output_dir={out}", f"quality.n_identities={m}", f"quality.images_per_identity={k}",
        f"quality.quick.n_identities={m}", f"quality.quick.images_per_identity={k}",
        f"quality.train_contexts={testbed_dir / 'train_dlib.npz'}",
        f"quality.contexts.holdout_embeddings={testbed_dir / 'holdout_dlib.npz'}",
    ])


def make_quality_run(cfg, testbed_dir: Path) -> QualityRun:
    from embedding.files import load_embeddings

    q = cfg.quality
    return QualityRun(load_trained_model(q.checkpoint, "ema", "cpu"), FaceAligner(device="cpu", pad=0.2), DlibBackend(device="cpu"),
                      load_embeddings(testbed_dir / "train_dlib.npz").embeddings,
                      load_embeddings(testbed_dir / "train_dlib.npz").embeddings, testbed_dir / "holdout",
                      int(q.n_identities), int(q.images_per_identity), 0, 128, Path(q.output_dir), {"test": 1})


def test_perfect_identities_score_perfectly_and_results_resume(testbed_dir: Path, tmp_path: Path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(generation, "sample_images", faces_of_contexts(testbed_dir, calls))
    cfg = quality_config(testbed_dir, tmp_path)
    run = make_quality_run(cfg, testbed_dir)
    (setting,) = resolve_settings(cfg.quality, ["ddim50_holdout"])
    result, images = run_setting(run, setting)
    assert images.shape == (6, 32, 32, 3) and calls == [6]
    assert result["detected_share"] == 1.0 and result["identity_match"] == 1.0 and result["eer"] == 0.0
    assert result["genuine_mean"] > 0.97 > result["impostor_mean"]
    assert result["source_match_pixels"] == 1.0 and result["source_match_fr"] == 1.0
    assert result["source_match_chance"] == pytest.approx(1 / 3)
    assert result["copy_share"] == 0.0 and result["novelty_max_cos_mean"] < result["genuine_mean"]
    assert 0 < result["pixel_diversity"] < 0.03  # the +-3 grey-level noise: RMS ~ 2/255 * sqrt(2)
    # the stored result is loaded, not sampled again; a changed setting is sampled again
    again, same_images = run_setting(run, setting)
    assert calls == [6] and again == result and np.array_equal(same_images, images)
    OmegaConf.set_struct(cfg.quality, False)
    cfg.quality.settings.ddim50_holdout.sampling.eta = 0.5
    (changed,) = resolve_settings(cfg.quality, ["ddim50_holdout"])
    run_setting(run, changed)
    assert calls == [6, 6]


def test_sample_setting_packs_batches_without_changing_images(testbed_dir: Path) -> None:
    model = load_trained_model(testbed_dir / "run", "ema", "cpu")
    (setting,) = resolve_settings(quality_config(testbed_dir, testbed_dir).quality, ["ddim50_gauss"])
    sampling = OmegaConf.merge(setting.sampling, {"steps": 4, "batch_size": 4, "micro_batch": 4})
    contexts = torch.nn.functional.normalize(torch.randn(3, 128, generator=torch.Generator().manual_seed(0)), dim=1).numpy()
    images, labels, seconds = sample_setting(model, sampling, ["a", "b", "c"], contexts, 2, seed=5)
    assert images.shape == (6, 32, 32, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2] and seconds > 0
    alone = sample_images(model, torch.from_numpy(contexts[[2]]), [image_seed(5, "c", 1)],
                          SamplerSettings.from_config(sampling))
    assert np.array_equal(alone[0], images[5])  # image 1 of identity c: the same alone or packed (same machine)
    with pytest.raises(ValueError, match="sampling.amp"):
        sample_setting(model, OmegaConf.merge(sampling, {"amp": "float8"}), ["a"], contexts[:1], 1, seed=0)


def test_benchmark_prints_the_summary_json_last(testbed_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    spec = importlib.util.spec_from_file_location("identity_quality", ROOT / "benchmarks" / "identity_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(generation, "sample_images", faces_of_contexts(testbed_dir, []))
    overrides = ["device=cpu", f"build.output_dir={testbed_dir}", f"quality.checkpoint={testbed_dir / 'run'}",
                 f"quality.output_dir={tmp_path}", "quality.n_identities=3", "quality.images_per_identity=2",
                 "quality.default=ddim50_holdout", f"quality.train_contexts={testbed_dir / 'train_dlib.npz'}",
                 f"quality.contexts.holdout_embeddings={testbed_dir / 'holdout_dlib.npz'}"]
    summary = bench.main(["--settings", "ddim50_holdout", "--threads", "1", *overrides])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == summary and last["default"] == "ddim50_holdout"
    assert set(last["settings"]["ddim50_holdout"]) == set(SUMMARY_KEYS)
    assert last["settings"]["ddim50_holdout"]["identity_match"] == 1.0
    assert {p.name for p in tmp_path.iterdir()} >= {"report.md", "report.json", "novel_identities.png", "settings"}
    with pytest.raises(ValueError, match="quick.settings must include the default setting nope"):
        bench.main(["--quick", *overrides[:-1], "quality.default=nope"])
