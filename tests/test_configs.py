"""Every config group composes and instantiates; every root passes its own start-up checks; code defaults equal the configs.

Full-size models are built on the ``meta`` device; everything else from the real configs shrunk by
``conftest.SHRINK`` (the ``shrunk_config`` fixture).
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import alignment.blocks
import contexts.sources
import cpu_demo.pipeline
import dataset_building.export
import dataset_building.filters
import dataset_building.split
import diffusion.training
import embedding.encoding
import evaluation.report
import face_recognition_training.evaluate as fr_evaluate
import face_recognition_training.train as fr_train
import testbed.settings
from alignment.aligner import FaceAligner
from diffusion.ema import EMASchedule
from embedding.backends import build_backend
from embedding.files import save_embeddings
from face_recognition_training.losses import MarginHead
from face_recognition_training.schedule import build_scheduler
from models.autoencoder.vqgan import VQDecoderInterface, VQEncoderInterface
from models.iresnet import ARCHITECTURES, iresnet18
from utils.config import CONFIG_DIR, compose
from utils.settings import Number, SettingError, check_settings

from .conftest import ROOT_CONFIGS

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


EXPECTED_PARAMS = {"CA": 216_341_187, "AdaGN": 134_595_939}

#: root config -> the start-up checks of the script that reads it
CHECKS: dict[str, tuple] = {
    "align_config": alignment.blocks.SETTINGS,
    "contexts_config": contexts.sources.SETTINGS,
    "demo_config": cpu_demo.pipeline.SETTINGS,
    "encode_config": embedding.encoding.ENCODE_SETTINGS,
    "evaluate_config": evaluation.report.SETTINGS,
    "export_config": dataset_building.export.SETTINGS,
    "filter_config": dataset_building.filters.SETTINGS,
    "evaluate_fr_config": fr_evaluate.SETTINGS,
    "evaluate_lfw_config": evaluation.report.LFW_SETTINGS,
    "extract_embeddings_config": embedding.encoding.EXTRACT_SETTINGS,
    "fr_train_config": fr_train.SETTINGS,
    "sample_config": (),  # sampling.* are checked by diffusion.generation
    "split_config": dataset_building.split.SETTINGS,
    "testbed_config": testbed.settings.SETTINGS,
    "train_config": diffusion.training.SETTINGS,
}
#: root -> the group variants that hold optional keys (elastic heads: std; step schedule: milestones)
VARIANTS = {"fr_train_config": [[f"fr/head={h}"] for h in options("fr/head")] + [["fr/schedule=step"]]}


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_build_the_paper_sizes(model: str) -> None:
    cfg = compose("train_config", [f"model={model}"])
    with torch.device("meta"):
        unet = instantiate(cfg.model)
    assert sum(p.numel() for p in unet.parameters()) == EXPECTED_PARAMS[cfg.model.condition_type]


@pytest.mark.parametrize("diffusion", options("diffusion"))
def test_diffusion_configs_wrap_the_model(diffusion: str) -> None:
    cfg = compose("train_config", [f"diffusion={diffusion}"])
    with torch.device("meta"):
        ddpm = instantiate(cfg.diffusion)
    assert ddpm.betas.shape == (cfg.diffusion.T,)
    assert type(ddpm.eps_model).__name__ == "ConditionalUNet"


def test_every_root_has_its_checks() -> None:
    assert sorted(CHECKS) == ROOT_CONFIGS


@pytest.mark.parametrize("root", ROOT_CONFIGS)
def test_root_config_passes_its_checks_full_and_shrunk(root: str, shrunk_config) -> None:
    for cfg in (compose(root), shrunk_config(root)):
        check_settings(cfg, CHECKS[root])
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("root", [r for r in ROOT_CONFIGS if CHECKS[r]])
def test_every_check_names_a_real_key_and_refuses_a_bad_value(root: str) -> None:
    """A rule on a misspelt key would be skipped silently; a rule must also fire on a value out of its range."""
    configs = [compose(root, overrides) for overrides in [[]] + VARIANTS.get(root, [])]
    for rule in CHECKS[root]:
        cfg = next((c for c in configs if OmegaConf.select(c, rule.key, default="<absent>") != "<absent>"), None)
        assert cfg is not None, f"{root}: no config has the key {rule.key}"
        if isinstance(rule, Number):
            bad: Any = [float("nan")] if rule.each else float("nan")
        else:
            bad = "not-a-choice"
        broken = cfg.copy()
        OmegaConf.update(broken, rule.key, bad, merge=False)
        with pytest.raises(SettingError, match=rf"^{re.escape(rule.key)} must be .*, found "):
            check_settings(broken, CHECKS[root])


def test_training_objects_instantiate(shrunk_config) -> None:
    cfg = shrunk_config("train_config")
    ddpm = instantiate(cfg.diffusion)
    ema = instantiate(cfg.training.ema)(model=ddpm)
    optimizer = instantiate(cfg.training.optimizer)(params=ddpm.parameters())
    scheduler = instantiate(compose("train_config").training.lr_scheduler)(optimizer=optimizer)
    assert ema.schedule == EMASchedule(**{k: v for k, v in cfg.training.ema.items() if not k.startswith("_")})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.training.optimizer.lr)
    assert type(scheduler).__name__ == "CosineAnnealingWarmRestarts"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_build_their_models(experiment: str) -> None:
    cfg = compose("train_config", [f"experiment={experiment}"])
    unet = instantiate(cfg.diffusion).eps_model
    x_t = torch.zeros(1, 3, cfg.constants.image_size, cfg.constants.image_size)
    context = torch.zeros(1, cfg.constants.context_dim)
    with torch.no_grad():
        assert unet(x_t, torch.tensor([1]), context).shape == x_t.shape


def test_dataset_and_autoencoder_groups_instantiate(tmp_path: Path, shrunk_config) -> None:
    (tmp_path / "data" / "ffhq_128").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(tmp_path / "data" / "ffhq_128" / f"{i}.png")
    save_embeddings(tmp_path / "data" / "embeddings_elasticface_ffhq_128.npz", ["0", "1", "2"], np.eye(3, 32, dtype=np.float32))
    dataset = instantiate(shrunk_config("train_config").dataset)  # paths.ffhq and paths.ffhq_embeddings
    assert len(dataset) == 3 and dataset.context_dim == 32
    cfg = compose("train_config")
    with torch.device("meta"):
        encoder = VQEncoderInterface(cfg.autoencoder.ddconfig, cfg.autoencoder.embed_dim)
        decoder = VQDecoderInterface(cfg.autoencoder.ddconfig, cfg.autoencoder.embed_dim, cfg.autoencoder.n_embed)
    assert encoder.quant_conv.out_channels == decoder.post_quant_conv.in_channels == 3


@pytest.mark.parametrize("backbone", options("fr/backbone"))
def test_fr_backbones(backbone: str) -> None:
    cfg = compose("fr_train_config", [f"fr/backbone={backbone}"])
    with torch.device("meta"):
        net = instantiate(cfg.fr.backbone.net)
    assert cfg.fr.backbone.name == backbone and type(net).__name__ == "IResNet"
    assert net.fc.out_features == cfg.fr.backbone.net.num_features


def test_every_iresnet_has_a_backbone_config() -> None:
    """``evaluate_fr.py --arch <name>`` becomes ``fr/backbone=<name>``: every architecture needs its file."""
    assert options("fr/backbone") == sorted(ARCHITECTURES)


@pytest.mark.parametrize("head", options("fr/head"))
def test_fr_heads(head: str) -> None:
    cfg = compose("fr_train_config", [f"fr/head={head}"])
    loss = instantiate(cfg.fr.head.loss, embedding_size=8, num_classes=5)
    assert isinstance(loss, MarginHead) and cfg.fr.head.name == head
    assert (loss.s, loss.m) == (cfg.fr.head.loss.s, cfg.fr.head.loss.m)
    assert getattr(loss, "std", None) == cfg.fr.head.loss.get("std")
    logits = loss.eval()(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()


@pytest.mark.parametrize("schedule", options("fr/schedule"))
def test_fr_schedules(schedule: str) -> None:
    cfg = compose("fr_train_config", [f"fr/schedule={schedule}"])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = build_scheduler(optimizer, cfg.fr.schedule)
    assert type(scheduler).__name__ == {"plateau": "ReduceLROnPlateau", "step": "MultiStepLR"}[schedule]


@pytest.mark.parametrize("name", ["iresnet", "dlib"])
def test_fr_backend_group(name: str, tmp_path: Path, shrunk_config) -> None:
    torch.save(iresnet18().state_dict(), tmp_path / "r18.pth")
    cfg = shrunk_config("encode_config", f"fr_backend.name={name}", "fr_backend.iresnet.arch=iresnet18",
                        f"fr_backend.iresnet.weights={tmp_path / 'r18.pth'}")
    backend = build_backend(cfg.fr_backend, device="cpu")
    embeddings = backend.embed([np.full((112, 112, 3), 128, np.uint8)])
    assert embeddings.shape == (1, {"iresnet": 512, "dlib": 128}[name])


def test_paths_are_relative() -> None:
    """No absolute path in any default: everything is relative to the launch folder (or set on the command line)."""
    for root in ROOT_CONFIGS:
        values = OmegaConf.to_container(compose(root).paths, resolve=True)
        assert not [v for v in values.values() if Path(str(v)).is_absolute()], root


def test_the_stages_hand_the_same_run_to_each_other() -> None:
    """sample.py writes where align.py reads, align.py where split and encode read, split where FR training reads."""
    sample = compose("sample_config", ["paths.run=r", "paths.contexts=c"])
    written = Path(sample.sampling.out_dir) / Path(sample.checkpoint.path).name / Path(sample.sampling.contexts_file).stem
    align = compose("align_config", ["paths.run=r", "paths.contexts=c"]).align
    assert Path(align.input_dir) == written
    split = compose("split_config", ["paths.run=r", "paths.contexts=c"]).split
    assert split.input_dir == align.output_dir == compose("encode_config", ["paths.run=r", "paths.contexts=c"]).encode.input
    assert split.output_dir == compose("fr_train_config", ["paths.run=r", "paths.contexts=c"]).data.root
    assert compose("evaluate_config").evaluate.synthetic == compose("encode_config").encode.output


def defaults(function: Any) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


#: (function, root config, {parameter: config key}): the defaults a script's config gives these functions
DEFAULTS = [
    (FaceAligner, "align_config", {"min_face_size": "align.min_face_size", "thresholds": "align.thresholds",
                                   "batch_size": "align.batch_size", "pad": "align.pad"}),
    (alignment.blocks.align_identities, "align_config", {
        "just_resize_if_fail": "align.just_resize_if_fail", "template": "align.template", "size": "align.size",
        "tile_size": "align.tile_size", "output": "align.output", "batch_size": "align.batch_size",
        "report_path": "align.report"}),
    (EMASchedule, "train_config", {k: f"training.ema.{k}" for k in ("inv_gamma", "power", "min_value", "max_value")}),
    (fr_evaluate.embed_images, "evaluate_fr_config", {"batch_size": "eval.batch_size", "amp": "evaluate_fr.amp"}),
    (fr_evaluate.evaluate_backbone, "fr_train_config", {"batch_size": "eval.batch_size"}),
    (fr_evaluate.load_verification_sets, "fr_train_config", {"names": "eval.benchmarks"}),
    (dataset_building.split.split_identities, "split_config", {
        k: f"split.{k}" for k in ("min_images", "identities", "images_per_identity", "tile_size")}),
    (evaluation.report.evaluate_sets, "evaluate_config", {
        "impostor_pairs": "evaluate.impostor_pairs", "max_exhaustive": "evaluate.max_exhaustive", "seed": "evaluate.seed",
        **{f"{k}_threshold": f"evaluate.thresholds.{k}" for k in ("uniqueness", "consistency", "leakage")}}),
    (evaluation.report.evaluate_lfw_set, "evaluate_lfw_config", {"on_missing": "evaluate_lfw.on_missing"}),
    (embedding.encoding.encode_dataset, "encode_config", {
        k: f"encode.{k}" for k in ("tile_size", "flip", "identities_per_shard", "keep_shards")}),
    (contexts.sources.synthetic_uniform, "contexts_config", {"dim": "contexts.dim", "seed": "contexts.seed"}),
    (contexts.sources.authentic, "contexts_config", {"random": "contexts.random", "seed": "contexts.seed"}),
    (contexts.sources.from_images, "contexts_config", {"batch_size": "contexts.fr_backend.batch_size"}),
]


@pytest.mark.parametrize("function, root, keys", DEFAULTS, ids=[f.__qualname__ for f, _, _ in DEFAULTS])
def test_code_defaults_equal_the_config(function: Any, root: str, keys: dict[str, str]) -> None:
    found = defaults(function)
    cfg = compose(root)
    for parameter, key in keys.items():
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        expected = list(found[parameter]) if isinstance(found[parameter], tuple) else found[parameter]
        assert expected == value, f"{function.__qualname__}({parameter}={found[parameter]!r}) but {root} {key}={value!r}"


@pytest.mark.parametrize("section", ["model", "diffusion"])
def test_the_shipped_run_folder_still_composes(section: str) -> None:
    """data/demo/checkpoint/.hydra/config.yaml (a published run folder's config) is what experiment=demo composes to."""
    shipped = OmegaConf.load(PROJECT_ROOT / "data" / "demo" / "checkpoint" / ".hydra" / "config.yaml")
    now = compose("train_config", ["experiment=demo"])
    assert OmegaConf.to_container(shipped[section], resolve=True) == OmegaConf.to_container(now[section], resolve=True)
    assert shipped.model._target_ == "models.diffusion.unet.ConditionalUNet"
    assert shipped.diffusion._target_ == "diffusion.ddpm.DenoisingDiffusionProbabilisticModel"
