"""Identity quality of novel identities per generation setting, for one trained model (issue 17, item 3).

Run from the project root::

    python benchmarks/identity_quality.py --quick      # < 10 min on 2 CPU cores: DDPM-1000, the default, DDIM-10
    python benchmarks/identity_quality.py              # every setting of quality.settings, M x K = 100 x 10
    python benchmarks/identity_quality.py quality.checkpoint=trained_models/unet-cond-ca-bs512-150K-cpd25 \\
        fr_backend.name=iresnet quality.fit_embeddings=data/embeddings_elasticface_ffhq_128.npz \\
        quality.train_embeddings=data/embeddings_elasticface_ffhq_128.npz quality.sampling.clip_x0=null device=cuda

Arguments after the flags are overrides of ``configs/testbed_config.yaml`` (section ``quality``,
``fr_backend``, ``device``, ``paths``). For each setting, M novel identities (contexts that belong
to nobody, the same for every setting) x K images (the same per-image seeds) are sampled, aligned
with MTCNN, embedded, and scored (:mod:`testbed.metrics`). Writes ``report.md`` (the settings
table), ``report.json``, ``novel_identities.png`` (a row of novel identities per setting) and
``settings/<name>.{json,npz}`` (a rerun resumes) into ``quality.output_dir``; prints one JSON line
last: ``{"default": ..., "settings": {name: {eer, fmr100, fdr, identity_match, detected_share,
genuine_mean, impostor_mean, novelty_max_cos_mean, leakage_share, diversity, s_per_image}}}``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from alignment.aligner import FaceAligner
from diffusion.generation import load_trained_model
from embedding.backends import backend_settings, build_backend
from embedding.files import load_embeddings
from evaluation.metrics import check_embeddings
from testbed.quality import QualityRun, run_setting
from testbed.report import markdown_table, reference_setting, settings_figure, summary_json
from testbed.settings import check_testbed_settings, resolve_settings
from utils.atomic import write_json_atomic, write_text_atomic
from utils.config import compose, resolve_device

log = logging.getLogger("identity_quality")


def build_run(cfg: DictConfig, quick: bool) -> tuple[QualityRun, DictConfig]:
    """Load model, aligner, FR backend and the training embeddings named by ``cfg.quality``."""
    check_testbed_settings(cfg)
    q = cfg.quality
    sizes = q.quick if quick else q
    device = resolve_device(cfg.device)
    model = load_trained_model(q.checkpoint, q.which, device, cfg.paths.vq_decoder)
    train = None
    if q.train_embeddings is not None:
        train, _ = check_embeddings(load_embeddings(q.train_embeddings).embeddings, None, str(q.train_embeddings))
    train_contexts = None
    if q.train_contexts is not None:
        train_contexts = load_embeddings(q.train_contexts).embeddings
        if train_contexts.shape[1] != model.context_dim:
            raise ValueError(f"quality.train_contexts={q.train_contexts} holds {train_contexts.shape[1]}-d contexts but "
                             f"the model takes {model.context_dim}-d ones")
    backend = build_backend(cfg.fr_backend, device=device)
    if train is not None and train.shape[1] != backend.embedding_dim:
        raise ValueError(f"quality.train_embeddings={q.train_embeddings} holds {train.shape[1]}-d embeddings but "
                         f"fr_backend {backend_settings(cfg.fr_backend)['name']} gives {backend.embedding_dim}-d ones")
    run = QualityRun(
        model=model,
        aligner=FaceAligner(device=device, min_face_size=int(q.min_face_size), pad=float(q.detect_pad)),
        backend=backend,
        train_embeddings=train,
        train_contexts=train_contexts,
        holdout_images=Path(q.holdout_images) if q.holdout_images is not None else None,
        n_identities=int(sizes.n_identities),
        images_per_identity=int(sizes.images_per_identity),
        seed=int(q.seed),
        upscale_to=int(q.upscale_to),
        output_dir=Path(q.output_dir),
        fingerprint={"checkpoint": str(model.checkpoint), "checkpoint_bytes": model.checkpoint.stat().st_size,
                     "m": int(sizes.n_identities), "k": int(sizes.images_per_identity), "seed": int(q.seed),
                     "fr_backend": OmegaConf.to_container(cfg.fr_backend, resolve=True), "upscale_to": int(q.upscale_to),
                     "detect_pad": float(q.detect_pad), "train_embeddings": str(q.train_embeddings),
                     "train_contexts": str(q.train_contexts)},
    )
    return run, sizes


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the summary printed as the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quality.quick sizes and settings (< 10 min on 2 cores)")
    parser.add_argument("--settings", default=None, help="comma-separated setting names (default: all, or quick's)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("overrides", nargs="*", help="overrides of configs/testbed_config.yaml, e.g. quality.n_identities=50")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cfg = compose("testbed_config", args.overrides)
    run, sizes = build_run(cfg, args.quick)
    default = str(cfg.quality.default)
    names = args.settings.split(",") if args.settings else (list(sizes.settings) if args.quick else None)
    settings = resolve_settings(cfg.quality, names)
    if args.quick and not args.settings and (default not in names or reference_setting(names) is None):
        raise ValueError(f"quality.quick.settings must include the default setting {default} and a setting named "
                         f"with ddpm and 1000, found {names}")
    start = time.perf_counter()
    results, images = {}, {}
    for setting in settings:
        results[setting.name], images[setting.name] = run_setting(run, setting)
    out = run.output_dir
    title = (f"Identity quality of {run.model.name}: {run.n_identities} novel identities x {run.images_per_identity} "
             f"images, {backend_settings(cfg.fr_backend)['name']} embeddings")
    write_text_atomic(out / "report.md", markdown_table(results, default, title))
    write_json_atomic(out / "report.json", {"title": title, "default": default, "settings": results})
    settings_figure(images, run.images_per_identity, out / "novel_identities.png", int(cfg.quality.figure_identities))
    log.info("%d settings in %.0f s; report in %s", len(settings), time.perf_counter() - start, out)
    summary = summary_json(results, default)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
