"""The demo's stages: each calls the library function behind one project script, on that script's config.

``contexts`` (create_sample_identity_contexts.py) -> ``sample`` (sample.py) -> ``align`` (align.py,
after enlarging the 32 px samples) -> ``split`` (split_identity_blocks.py) -> ``encode`` (encode.py,
dlib) -> ``evaluate`` (evaluate.py) -> ``novelty`` (:mod:`cpu_demo.novelty`) -> ``settings``
(:mod:`cpu_demo.settings_table`). Each script config is the real ``configs/<script>_config.yaml``
with the demo's values merged over it (:meth:`DemoRun.script_config`). Every stage takes the
:class:`DemoRun` and the results of the earlier stages and returns a JSON-able dict.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from alignment.blocks import align_from_config
from contexts.sources import contexts_from_config
from cpu_demo.novelty import stage_novelty
from cpu_demo.run import CONTEXTS_NAME, OUTPUTS, DemoRun
from cpu_demo.settings_table import stage_settings
from dataset_building.card import record_derivation, update_card
from dataset_building.split import split_identities
from diffusion.generation import sample_from_config, samples_dir
from embedding.encoding import encode
from embedding.files import load_embeddings
from evaluation.report import evaluate
from testbed.faces import resize_images
from testbed.metrics import identity_match
from utils.image_io import discover_identities, read_identity, write_block

log = logging.getLogger(__name__)

__all__ = ["OUTPUTS", "STAGES", "DemoRun"]


def stage_contexts(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Contexts that belong to nobody: ``identities`` draws of ``demo.contexts.source`` (uniform on the sphere by
    default, as the paper)."""
    d = run.cfg.demo
    cfg = run.script_config("contexts_config", {"device": run.device, "contexts": {
        **OmegaConf.to_container(d.contexts, resolve=True), "embeddings_file": d.testbed.train_embeddings,
        "n": int(run.profile.identities), "dim": 128, "seed": run.seed, "out_dir": str(run.path("contexts")),
        "name": CONTEXTS_NAME}})
    _, npz = contexts_from_config(cfg)
    return {"contexts_file": str(npz), "n_contexts": len(load_embeddings(npz))}


def stage_sample(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """``images_per_identity`` images per context (``demo.sampling``, seeded per image) as identity blocks."""
    d = run.cfg.demo
    cfg = run.script_config("sample_config", {
        "device": run.device,
        "checkpoint": {"path": d.testbed.checkpoint, "which": d.testbed.which},
        "sampling": {**OmegaConf.to_container(d.sampling, resolve=True),
                     **run.sample_batch(int(run.profile.identities) * int(run.profile.images_per_identity)),
                     "contexts_file": results["contexts"]["contexts_file"], "n_contexts": None,
                     "n_samples_per_context": int(run.profile.images_per_identity), "seed": run.seed,
                     "out_dir": str(run.path("samples"))},
    })
    summary = sample_from_config(cfg)
    return {"samples_dir": str(samples_dir(cfg)), "images": summary.images, "seconds": summary.seconds}


def upscale_blocks(input_dir: Path, output_dir: Path, size: int) -> int:
    """Enlarge every tile of the identity blocks in ``input_dir`` to ``size`` px (bicubic) into ``output_dir``.

    MTCNN's smallest face is 20 px; a 32 px sample holds a face of about that size, so the tiles are
    enlarged before detection, as the testbed's training faces were (:func:`testbed.faces.embed_faces`).
    Returns the number of tiles.
    """
    count = 0
    for identity, source in discover_identities(input_dir).items():
        tiles = read_identity(source)
        count += len(tiles)
        if not any(output_dir.glob(f"{identity}.grid*.png")):
            write_block(output_dir, identity, resize_images(tiles, size))
    record_derivation(output_dir, input_dir, "cpu_demo upscale_blocks", {"size": size, "resample": "bicubic"})
    return count


def stage_align(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Enlarge the samples, then align them to 112x112 ArcFace crops with MTCNN (tiles without a face are dropped)."""
    d = run.cfg.demo
    tiles = upscale_blocks(Path(results["sample"]["samples_dir"]), run.path("upscaled"), int(d.upscale_to))
    report = align_from_config(run.script_config("align_config", {"device": run.device, "align": {
        **OmegaConf.to_container(d.alignment, resolve=True),
        "input_dir": str(run.path("upscaled")), "output_dir": str(run.path("aligned"))}}))
    totals = report["totals"]
    return {"tiles": tiles, "detected": int(totals["detected"]), "detected_share": totals["detected"] / max(tiles, 1),
            "dropped": int(totals["dropped"])}


def stage_split(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Class folders ``dataset/<identity>/<k>.png`` of the identities with at least two aligned faces."""
    summary = split_identities(run.path("aligned"), run.path("dataset"), min_images=2)
    if summary["identities"] < 2:
        raise ValueError(
            f"only {summary['identities']} novel identities kept two or more detected faces in {run.path('aligned')}; "
            f"evaluation needs two (look at the samples in {results['sample']['samples_dir']})"
        )
    return dict(summary)


def stage_encode(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """dlib embeddings (128-d) of the aligned novel faces, labelled by identity."""
    out = encode(run.script_config("encode_config", {
        "device": run.device, "fr_backend": {"name": "dlib", "dlib": {"input": "arcface_crop"}},
        "encode": {"input": str(run.path("dataset")), "output": str(run.path("generated_embeddings"))}}))
    return {"embeddings": str(out), "n": len(load_embeddings(out))}


def stage_evaluate(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """evaluate.py on the novel identities (leakage against the testbed's training faces), plus the identity match."""
    d = run.cfg.demo
    t = float(d.fr_threshold)
    report = evaluate(run.script_config("evaluate_config", {"evaluate": {
        "synthetic": str(run.path("generated_embeddings")), "real": str(d.testbed.train_embeddings),
        "output_dir": str(run.path("evaluation")), "impostor_pairs": None, "seed": run.seed,
        "thresholds": {"uniqueness": t, "consistency": t, "leakage": t}}}))
    update_card(run.path("dataset"), evaluation_report=run.path("evaluation") / "report.json")
    v = report["verification"]
    keys = ("error_rate_definition", "eer", "eer_threshold", "fmr100", "fmr1000", "auc", "genuine_mean", "genuine_std",
            "impostor_mean", "impostor_std", "n_genuine", "n_impostor")
    generated = load_embeddings(run.path("generated_embeddings"))
    match, _ = identity_match(generated.embeddings, np.asarray(generated.labels))
    return {
        **{k: v[k] for k in keys},
        "identity_match": match,
        "centre_leak_share": report["leakage"]["leaked_share"],
        "plots": [str(run.path("evaluation") / name) for name in v["plots"]],
    }


StageFn = Callable[[DemoRun, Mapping[str, dict]], dict[str, Any]]

#: the stages in the order they run
STAGES: dict[str, StageFn] = {
    "contexts": stage_contexts,
    "sample": stage_sample,
    "align": stage_align,
    "split": stage_split,
    "encode": stage_encode,
    "evaluate": stage_evaluate,
    "novelty": stage_novelty,
    "settings": stage_settings,
}
