"""The demo's stages: each calls the library function behind one project script on a composed config.

``embed`` (extract_face_embeddings_from_dir.py) -> ``train`` (main.py) -> ``contexts``
(create_sample_identity_contexts.py) -> ``sample`` (sample.py) -> ``align`` (align.py) -> ``split``
(split_identity_blocks.py) -> ``encode`` (encode.py) -> ``evaluate`` (evaluate.py). Every stage
takes the :class:`DemoRun` and the results of the earlier stages and returns a JSON-able dict.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from alignment.aligner import FaceAligner
from alignment.blocks import align_from_config
from contexts.sources import contexts_from_config
from cpu_demo.data import (
    Augmentation,
    build_training_images,
    list_photos,
    person_centres,
    person_of,
)
from dataset_building.card import record_derivation, update_card
from dataset_building.split import split_identities
from diffusion.generation import sample_from_config, samples_dir
from diffusion.train_state import OPTIMIZATION_FILE, has_checkpoint
from diffusion.training import train
from embedding.encoding import encode, extract_embeddings
from embedding.files import load_embeddings, save_embeddings
from evaluation.report import evaluate
from utils.checkpoint import torch_load
from utils.config import compose
from utils.image_io import discover_identities, read_identity, write_block

log = logging.getLogger(__name__)

#: name of the contexts file (one context per person of the demo photos)
CONTEXTS_NAME = "demo_people"


@dataclass
class DemoRun:
    """Settings and output paths of one demo run.

    Args:
        cfg: the composed ``configs/demo_config.yaml``.
        profile: ``cfg.demo.profiles.fast`` or ``.full`` (sizes of the run).
    """

    cfg: DictConfig
    profile: DictConfig

    @property
    def out(self) -> Path:
        """The demo's output folder (``demo.output_dir``)."""
        return Path(self.cfg.demo.output_dir)

    @property
    def device(self) -> str:
        """The ``device`` setting passed to every stage (``auto``, ``cpu``, ``cuda``...)."""
        return str(self.cfg.device)

    @property
    def seed(self) -> int:
        """The one seed of the run (augmentation, training, sampling, impostor pairs)."""
        return int(self.cfg.demo.seed)

    def path(self, name: str) -> Path:
        """A named output inside ``demo.output_dir`` (see ``OUTPUTS``)."""
        return self.out / OUTPUTS[name]


#: output files and folders of the stages, relative to ``demo.output_dir``
OUTPUTS = {
    "train_images": "data/train",
    "train_embeddings": "data/train_dlib.npz",
    "real_embeddings": "data/real_dlib.npz",
    "people": "data/people_dlib.npz",
    "run": "train",
    "contexts": "contexts",
    "samples": "samples",
    "upscaled": "samples_upscaled",
    "aligned": "aligned",
    "dataset": "dataset",
    "generated_embeddings": "embeddings/generated_dlib.npz",
    "evaluation": "evaluation",
}


def stage_embed(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Build the augmented training set and embed it and the original photos with dlib (``photo`` input)."""
    d = run.cfg.demo
    photos = list_photos(d.faces_dir)
    aug = Augmentation(**OmegaConf.to_container(d.augmentation.framing, resolve=True))
    aligner = FaceAligner(device=run.device, pad=float(d.augmentation.detect_pad))
    build_training_images(photos, run.path("train_images"), aligner, int(d.augmentation.copies_per_photo), aug, run.seed)
    backend = ["fr_backend.name=dlib", "fr_backend.dlib.input=photo", "num_workers=0", f"device={run.device}"]
    for folder, output in ((run.path("train_images"), "train_embeddings"), (Path(d.faces_dir), "real_embeddings")):
        if not run.path(output).is_file():
            extract_embeddings(compose("extract_embeddings_config",
                                              [*backend, f"input_dir={folder}", f"output_file={run.path(output)}"]))
    real = load_embeddings(run.path("real_embeddings"))
    people = person_centres(real)
    save_embeddings(run.path("people"), people.names, people.embeddings)
    return {"photos": len(photos), "people": people.names, "train_images": len(load_embeddings(run.path("train_embeddings")))}


def _checkpoint_step(run_dir: Path) -> int:
    """``global_step`` recorded in ``<run_dir>/checkpoints/optimization.ckpt``."""
    state = torch_load(run_dir / "checkpoints" / OPTIMIZATION_FILE,
                       source_hint="expected the run folder of `python main.py experiment=demo` (demo.checkpoint)")
    return int(state["global_step"])


def stage_train(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Continue training the shipped checkpoint (``demo.checkpoint``; null: from scratch) for ``train_steps`` steps.

    A run folder with a checkpoint of an interrupted demo is resumed in place instead.
    """
    d, p = run.cfg.demo, run.profile
    run_dir = run.path("run")
    start = 0
    source: str | None = None
    if d.checkpoint is not None:
        shipped = Path(d.checkpoint)
        if not (shipped / "checkpoints" / OPTIMIZATION_FILE).is_file():
            raise FileNotFoundError(
                f"demo.checkpoint={shipped} has no checkpoints/{OPTIMIZATION_FILE}; expected the run folder of "
                "`python main.py experiment=demo` (or set demo.checkpoint=null to train from scratch)"
            )
        start, source = _checkpoint_step(shipped), str(shipped)
    target = start + int(p.train_steps)
    if has_checkpoint(run_dir):
        source = "true"  # resume the interrupted demo run in place (even one killed while writing a checkpoint)
    overrides = [
        "experiment=demo", f"device={run.device}", f"constants.seed={run.seed}",
        f"dataset.images_root={run.path('train_images')}", f"dataset.embeddings_file={run.path('train_embeddings')}",
        f"training.steps={target}", f"training.steps_between_eval={int(p.train_checkpoint_every)}",
        f"training.steps_between_logging={int(p.train_log_every)}", f"training.steps_between_sampling={target}",
        f"training.sampling.steps={int(p.ddim_steps)}",
        f"training.checkpoint.restore={source if source is not None else 'false'}",
        f"training.checkpoint.path={run_dir if source == 'true' else 'null'}",
    ]
    train(compose("train_config", overrides), run_dir=run_dir)
    return {"run_dir": str(run_dir), "start_step": start, "end_step": target}


def stage_contexts(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Authentic contexts: one per person, the mean dlib embedding of that person's photos."""
    _, npz = contexts_from_config(compose("contexts_config", [
        f"device={run.device}", "contexts.source=authentic", f"contexts.embeddings_file={run.path('people')}",
        "contexts.n=null", f"contexts.out_dir={run.path('contexts')}", f"contexts.name={CONTEXTS_NAME}",
    ]))
    return {"contexts_file": str(npz), "n_contexts": len(load_embeddings(npz))}


def _sample_config(run: DemoRun, results: Mapping[str, dict]) -> DictConfig:
    p = run.profile
    return compose("sample_config", [
        f"device={run.device}", f"checkpoint.path={results['train']['run_dir']}", "checkpoint.which=ema",
        f"sampling.contexts_file={results['contexts']['contexts_file']}", "sampling.n_contexts=null",
        f"sampling.n_samples_per_context={int(p.samples_per_identity)}", f"sampling.seed={run.seed}",
        "sampling.sampler=ddim", f"sampling.steps={int(p.ddim_steps)}", f"sampling.eta={float(run.cfg.demo.sampling.eta)}",
        f"sampling.clip_x0={float(run.cfg.demo.sampling.clip_x0)}",
        f"sampling.batch_size={int(p.sample_batch)}",
        f"sampling.micro_batch={int(p.sample_batch)}", f"sampling.out_dir={run.path('samples')}",
    ])


def stage_sample(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Sample ``samples_per_identity`` images per context (DDIM, seeded per image) as identity blocks.

    This is ``python sample.py`` with the demo's overrides, x0 clipped to [-1, 1] (pixel space).
    """
    cfg = _sample_config(run, results)
    summary = sample_from_config(cfg)
    return {"samples_dir": str(samples_dir(cfg)), "images": summary.images}


def upscale_blocks(input_dir: Path, output_dir: Path, size: int) -> int:
    """Resize every tile of the identity blocks in ``input_dir`` to ``size`` px (bicubic) into ``output_dir``.

    MTCNN's smallest face is 20 px; a 32 px sample holds a face of about that size, so the tiles are
    enlarged before detection (the 112 px ArcFace crop is warped from the enlarged tile too).
    """
    count = 0
    for identity, source in discover_identities(input_dir).items():
        tiles = read_identity(source)
        count += len(tiles)
        if any(output_dir.glob(f"{identity}.grid*.png")):
            continue
        big = [np.asarray(Image.fromarray(t).resize((size, size), Image.BICUBIC)) for t in tiles]
        write_block(output_dir, identity, np.stack(big))
    record_derivation(output_dir, input_dir, "cpu_demo upscale_blocks", {"size": size, "resample": "bicubic"})
    return count


def stage_align(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Enlarge the samples, then align them to 112x112 ArcFace crops with MTCNN (tiles without a face are dropped)."""
    a = run.cfg.demo.alignment
    tiles = upscale_blocks(Path(results["sample"]["samples_dir"]), run.path("upscaled"), int(a.upscale_to))
    report = align_from_config(compose("align_config", [
        f"device={run.device}", f"align.input_dir={run.path('upscaled')}", f"align.output_dir={run.path('aligned')}",
        f"align.just_resize_if_fail={str(bool(a.just_resize_if_fail)).lower()}", f"align.min_face_size={int(a.min_face_size)}",
    ]))
    totals = report["totals"]
    return {"tiles": tiles, "detected": int(totals["detected"]), "detected_share": totals["detected"] / max(tiles, 1),
            "resized": int(totals["resized"]), "dropped": int(totals["dropped"])}


def stage_split(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Class folders ``dataset/<person>/<k>.png`` of the identities with at least two aligned faces."""
    summary = split_identities(run.path("aligned"), run.path("dataset"), min_images=2)
    if summary["identities"] < 2:
        raise ValueError(
            f"only {summary['identities']} generated identities kept two or more detected faces in {run.path('aligned')}; "
            f"evaluation needs two (look at the samples in {results['sample']['samples_dir']}; a longer training helps)"
        )
    return dict(summary)


def stage_encode(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """dlib embeddings (128-d) of the aligned generated faces, labelled by identity."""
    out = encode(compose("encode_config", [
        f"device={run.device}", f"encode.input={run.path('dataset')}", f"encode.output={run.path('generated_embeddings')}",
        "fr_backend.name=dlib", "fr_backend.dlib.input=arcface_crop",
    ]))
    return {"embeddings": str(out), "n": len(load_embeddings(out))}


def _real_reference(real_file: Path) -> dict[str, float]:
    """Genuine / impostor mean cosine among the real photos (same person vs different people)."""
    real = load_embeddings(real_file)
    people = np.array([person_of(n) for n in real.names])
    sims = real.embeddings @ real.embeddings.T
    upper = np.triu(np.ones_like(sims, dtype=bool), k=1)
    same = (people[:, None] == people[None, :]) & upper
    return {"real_genuine_mean": float(sims[same].mean()) if same.any() else float("nan"),
            "real_impostor_mean": float(sims[~(people[:, None] == people[None, :]) & upper].mean())}


def _identity_match(generated_file: Path, people_file: Path) -> float:
    """Share of generated faces whose nearest real person (cosine to the person's mean embedding) is their own."""
    generated, people = load_embeddings(generated_file), load_embeddings(people_file)
    nearest = np.asarray(people.names)[(generated.embeddings @ people.embeddings.T).argmax(axis=1)]
    own = np.asarray([name.split("/", 1)[0] for name in generated.names])
    return float((nearest == own).mean())


def stage_evaluate(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """evaluate.py on the generated set (leakage against the real photos), plus two demo-specific numbers."""
    t = float(run.cfg.demo.fr_threshold)
    report = evaluate(compose("evaluate_config", [
        f"evaluate.synthetic={run.path('generated_embeddings')}", f"evaluate.real={run.path('real_embeddings')}",
        f"evaluate.output_dir={run.path('evaluation')}", "evaluate.impostor_pairs=null", f"evaluate.seed={run.seed}",
        f"evaluate.thresholds.uniqueness={t}", f"evaluate.thresholds.consistency={t}", f"evaluate.thresholds.leakage={t}",
    ]))
    update_card(run.path("dataset"), evaluation_report=run.path("evaluation") / "report.json")
    v = report["verification"]
    keys = ("error_rate_definition", "eer", "eer_threshold", "fmr100", "fmr1000", "auc", "genuine_mean", "genuine_std",
            "impostor_mean", "impostor_std", "n_genuine", "n_impostor")
    return {
        **{k: v[k] for k in keys},
        "identity_match": _identity_match(run.path("generated_embeddings"), run.path("people")),
        **_real_reference(run.path("real_embeddings")),
        "plots": [str(run.path("evaluation") / name) for name in v["plots"]],
    }


StageFn = Callable[[DemoRun, Mapping[str, dict]], dict[str, Any]]

#: the stages in the order they run
STAGES: dict[str, StageFn] = {
    "embed": stage_embed,
    "train": stage_train,
    "contexts": stage_contexts,
    "sample": stage_sample,
    "align": stage_align,
    "split": stage_split,
    "encode": stage_encode,
    "evaluate": stage_evaluate,
}
