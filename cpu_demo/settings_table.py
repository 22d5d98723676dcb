"""A small version of the identity-quality settings table: a few sampling settings on a few novel identities.

Each row of ``demo.settings_table`` (``{sampling: {...}, contexts: {...}}``, the format of
``quality.settings`` in ``configs/testbed_config.yaml``) is run by :func:`testbed.quality.run_setting`
with the same contexts and per-image seeds, scored with the demo's MTCNN + dlib path, and written as a
markdown table (:func:`testbed.report.markdown_table`) and a figure of the identities per setting. A
finished setting is stored in ``settings_table/settings/<name>.{json,npz}``, so a rerun skips it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignment.aligner import FaceAligner
from cpu_demo.run import DemoRun
from diffusion.generation import load_trained_model
from embedding.backends import build_backend
from embedding.files import load_embeddings
from evaluation.metrics import check_embeddings
from testbed.quality import QualityRun, run_setting
from testbed.report import markdown_table, settings_figure
from testbed.settings import resolve_settings
from utils.atomic import write_text_atomic
from utils.config import resolve_device

#: the keys that name a sampling setting (a row that matches ``demo.sampling`` on them is the demo's own)
SETTING_KEYS = ("sampler", "steps", "timestep_spacing", "eta", "guidance_scale", "amp")


def table_quality_config(run: DemoRun) -> DictConfig:
    """The ``quality`` node :func:`testbed.settings.resolve_settings` reads: ``demo.settings_table`` over the
    testbed's defaults, with the demo's ``clip_x0``, batch sizes and contexts."""
    d = run.cfg.demo
    base = run.script_config("testbed_config", {}).quality
    shared = {"clip_x0": d.sampling.clip_x0,
              **run.sample_batch(int(run.profile.table_identities) * int(run.profile.table_images))}
    contexts = OmegaConf.merge(base.contexts, d.contexts, {"fit_embeddings": d.testbed.train_embeddings,
                                                           "holdout_embeddings": None})
    return OmegaConf.create({"settings": OmegaConf.to_container(d.settings_table, resolve=True),
                             "sampling": OmegaConf.to_container(OmegaConf.merge(base.sampling, shared), resolve=True),
                             "contexts": OmegaConf.to_container(contexts, resolve=True)})


def stage_settings(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Run every setting of ``demo.settings_table`` on ``table_identities`` x ``table_images``; table and figure."""
    d, p = run.cfg.demo, run.profile
    device = resolve_device(run.device)
    quality = table_quality_config(run)
    settings = resolve_settings(quality)
    model = load_trained_model(d.testbed.checkpoint, d.testbed.which, device)
    train_file = str(d.testbed.train_embeddings)
    train, _ = check_embeddings(load_embeddings(train_file).embeddings, None, train_file)
    m, k = int(p.table_identities), int(p.table_images)
    out = run.path("settings")
    quality_run = QualityRun(
        model=model,
        aligner=FaceAligner(device=device, min_face_size=int(d.alignment.min_face_size), pad=float(d.alignment.pad)),
        backend=build_backend({"name": "dlib", "input": "arcface_crop"}, device=device),
        train_embeddings=train, train_contexts=train, holdout_images=None, n_identities=m, images_per_identity=k, seed=run.seed,
        upscale_to=int(d.upscale_to), output_dir=out,
        fingerprint={"checkpoint": str(model.checkpoint), "checkpoint_bytes": model.checkpoint.stat().st_size, "m": m,
                     "k": k, "seed": run.seed, "fr_backend": "dlib arcface_crop", "upscale_to": int(d.upscale_to),
                     "detect_pad": float(d.alignment.pad), "train_embeddings": str(d.testbed.train_embeddings)},
    )
    rows, images = {}, {}
    for setting in settings:
        rows[setting.name], images[setting.name] = run_setting(quality_run, setting)
    demo_sampling = run.script_config("sample_config", {"sampling": d.sampling}).sampling
    own = next((s.name for s in settings if all(s.sampling[key] == demo_sampling[key] for key in SETTING_KEYS)
                and s.sampling.negative == demo_sampling.negative), "")
    table = write_text_atomic(out / "table.md", markdown_table(rows, own))
    figure = settings_figure(images, k, out / "settings_identities.png", m, min(k, 2))
    return {"settings": rows, "demo_setting": own, "identities": m, "images_per_identity": k, "table": str(table),
            "figure": str(figure)}
