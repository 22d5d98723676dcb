"""No loader runs code from a file a user is handed: one code-running pickle per loader kind, refused by name.

Each case writes a file whose unpickling would create ``PWNED`` (a pickled ``open(marker, "w")``),
hands it to the loader the scripts use, and checks the error names the file and the marker was
never written. The run folder's ``.hydra/config.yaml`` has its own test in
``tests/diffusion/test_train_state.py``.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from contexts.sources import load_contexts
from cpu_demo.state import STATE_FILE, StageState
from diffusion.ddpm import DenoisingDiffusionProbabilisticModel, load_diffusion_checkpoint
from diffusion.ema import EMAModel
from diffusion.generation import sample_from_config
from diffusion.latent_cache import LatentCache
from diffusion.train_state import (
    CHECKPOINT_DIR,
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZATION_FILE,
    TrainingObjects,
    load_training_state,
)
from embedding.encoding import encode_dataset
from embedding.files import load_embeddings, save_embeddings
from face_recognition_training.bin_reader import read_bin
from face_recognition_training.train import train as train_fr
from models.autoencoder.vqgan import load_vq_decoder
from models.diffusion.unet import ConditionalUNet
from models.iresnet import load_iresnet
from utils.config import compose
from utils.distributed import DistributedContext
from utils.names import UnsafeNameError

CTX = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
VQ_DDCONFIG = {"double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
               "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


class Payload:
    """Unpickling this writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


#: (the hostile file, a call of the loader the scripts use on it)
Hostile = tuple[Path, Callable[[], Any]]


def _torch_file(path: Path, marker: Path, wrap: Callable[[Any], Any] = lambda p: {"weight": p}) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(Payload(marker)), path)
    return path


def _tiny_ddpm() -> DenoisingDiffusionProbabilisticModel:
    unet = ConditionalUNet(input_channels=3, initial_channels=32, channel_multipliers=[1], is_attention=[False],
                           n_blocks_per_resolution=1, is_context_conditional=True, context_input_channels=4,
                           context_channels=32, norm_groups=8)
    return DenoisingDiffusionProbabilisticModel(unet, T=100)


def _diffusion_checkpoint(tmp: Path, marker: Path) -> Hostile:
    path = _torch_file(tmp / "ema_averaged_model.ckpt", marker)
    return path, lambda: load_diffusion_checkpoint(_tiny_ddpm(), path)


def _optimization_state(tmp: Path, marker: Path) -> Hostile:
    path = _torch_file(tmp / "run" / CHECKPOINT_DIR / OPTIMIZATION_FILE, marker, lambda p: {"global_step": p})
    model = _tiny_ddpm()
    for name in (MODEL_FILE, EMA_FILE):
        torch.save(model.state_dict(), path.parent / name)
    objects = TrainingObjects(model, EMAModel(model), torch.optim.Adam(model.parameters()), None,
                              torch.amp.GradScaler("cpu", enabled=False))
    return path, lambda: load_training_state(tmp / "run", objects, {}, CTX)


def _vq_weights(tmp: Path, marker: Path) -> Hostile:
    path = _torch_file(tmp / "first_stage_decoder_state_dict.pt", marker)
    return path, lambda: load_vq_decoder(path, VQ_DDCONFIG, n_embed=64)


def _fr_backbone(tmp: Path, marker: Path) -> Hostile:
    path = _torch_file(tmp / "backbone.pth", marker)
    return path, lambda: load_iresnet(path, arch="iresnet18")


def _fr_training_checkpoint(tmp: Path, marker: Path) -> Hostile:
    """``python -m face_recognition_training.train`` resuming from a hostile ``checkpoint.pt``."""
    for k in range(2):
        (tmp / "data" / f"id_{k}").mkdir(parents=True)
        for j in range(2):
            Image.fromarray(np.full((112, 112, 3), 40 * (k + j), np.uint8)).save(tmp / "data" / f"id_{k}" / f"{j}.png")
    path = _torch_file(tmp / "fr" / "checkpoint.pt", marker, lambda p: {"epoch": 1, "model": p})
    cfg = compose("fr_train_config", [
        f"data.root={tmp / 'data'}", "data.width=0", "data.depth=0", "data.num_workers=0", "fr/backbone=iresnet18",
        "fr/schedule=step", "train.batch_size=2", "train.device=cpu", "train.progress=false", "eval.bin_dir=null",
        f"train.output_dir={tmp / 'fr'}"])
    return path, lambda: train_fr(cfg)


def _embeddings_pt(tmp: Path, marker: Path) -> Hostile:
    path = _torch_file(tmp / "embeddings.pt", marker, lambda p: {"img_0": p})
    return path, lambda: load_embeddings(path)


def _contexts_npy(tmp: Path, marker: Path) -> Hostile:
    """The original contexts format: a ``torch.save``d dict named ``.npy``."""
    path = _torch_file(tmp / "random_synthetic_uniform_15000.npy", marker, lambda p: {"0": p})
    return path, lambda: load_contexts(path)


def _embeddings_npy_object_array(tmp: Path, marker: Path) -> Hostile:
    path = tmp / "embeddings.npy"
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return path, lambda: load_embeddings(path)


def _embeddings_npz_object_names(tmp: Path, marker: Path) -> Hostile:
    path = tmp / "embeddings.npz"
    np.savez(path, names=np.array([Payload(marker)], dtype=object), embeddings=np.zeros((1, 4), np.float32))
    return path, lambda: load_embeddings(path)


def _latent_cache(tmp: Path, marker: Path) -> Hostile:
    path = _torch_file(tmp / "latent_cache.pt", marker, lambda p: {"fingerprint": "f", "names": ["a"], "latents": p})
    return path, lambda: LatentCache.load_or_build(path, SimpleNamespace(names=["a"]), torch.nn.Identity(), "f", CTX)


def _verification_bin(tmp: Path, marker: Path) -> Hostile:
    path = tmp / "lfw.bin"
    path.write_bytes(pickle.dumps(([Payload(marker)], [True]), protocol=2))
    return path, lambda: read_bin(path)


def _demo_state(tmp: Path, marker: Path) -> Hostile:
    path = tmp / "demo" / STATE_FILE
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"fingerprint": Payload(marker)}))
    return path, lambda: StageState(path.parent, "fingerprint")


def _encode_shard_manifest(tmp: Path, marker: Path) -> Hostile:
    """A resumed ``encode.py`` reads ``<output>.shards/manifest.json`` written by an earlier run."""
    (tmp / "aligned" / "id_0").mkdir(parents=True)
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(tmp / "aligned" / "id_0" / "0.png")
    path = tmp / "out.npz.shards" / "manifest.json"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"n_identities": Payload(marker)}))
    return path, lambda: encode_dataset(tmp / "aligned", tmp / "out.npz", SimpleNamespace(embed=None))


LOADERS: dict[str, Callable[[Path, Path], Hostile]] = {
    "diffusion checkpoint": _diffusion_checkpoint,
    "optimization.ckpt": _optimization_state,
    "VQ weights": _vq_weights,
    "FR backbone": _fr_backbone,
    "FR training checkpoint": _fr_training_checkpoint,
    "embeddings .pt": _embeddings_pt,
    "contexts .npy (original)": _contexts_npy,
    "embeddings .npy object array": _embeddings_npy_object_array,
    "embeddings .npz object names": _embeddings_npz_object_names,
    "latent cache": _latent_cache,
    "verification .bin": _verification_bin,
    "demo state": _demo_state,
    "encode shard manifest": _encode_shard_manifest,
}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_code_running_pickle_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "PWNED"
    path, load = LOADERS[kind](tmp_path, marker)
    with pytest.raises((ValueError, RuntimeError)) as err:  # CheckpointError, BinFileError, DatasetError, ...
        load()
    message = str(err.value)
    assert not marker.exists(), f"{kind}: the payload ran"
    assert str(path) in message and "\n" not in message, f"{kind}: {type(err.value).__name__}: {message}"


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("output", ["block", "files"])
def test_sample_py_with_hostile_context_names_writes_nothing_outside(tmp_path: Path, output: str) -> None:
    """A contexts file whose identity names are paths: sample.py refuses each, and no image lands anywhere."""
    shipped = Path(__file__).resolve().parents[1] / "data" / "demo" / "checkpoint"
    outside = tmp_path / "outside"
    work = tmp_path / "deep" / "down" / "here"  # room for '..' to climb without leaving tmp_path
    for name in ["../../x", str(outside / "abs"), "a/b", ".hidden", "\x00"]:
        contexts = work / "contexts.pt"  # the original dict format keeps every name as written
        save_embeddings(contexts, [name], np.ones((1, 128), np.float32) / np.sqrt(128))
        cfg = compose("sample_config", [
            "device=cpu", f"checkpoint.path={shipped}", "checkpoint.which=ema", f"sampling.contexts_file={contexts}",
            "sampling.n_contexts=null", "sampling.n_samples_per_context=1", "sampling.sampler=ddim", "sampling.steps=1",
            "sampling.batch_size=1", "sampling.micro_batch=1", f"sampling.output={output}",
            f"sampling.out_dir={work / 'samples'}"])
        with pytest.raises(UnsafeNameError, match=f"identity name in {re.escape(str(contexts))} {re.escape(repr(name))}"):
            sample_from_config(cfg)
    images = sorted(str(p) for p in tmp_path.rglob("*.png"))
    assert images == [], images
    assert not outside.exists()
