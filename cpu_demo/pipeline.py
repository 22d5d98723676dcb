"""``run_demo(cfg)``: run the demo's stages in order, skip the finished ones, time each, write the report."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cpu_demo.report import (
    FIGURES,
    person_photos,
    plot_identity_grid,
    plot_loss,
    read_losses,
    write_report,
)
from cpu_demo.stages import OUTPUTS, STAGES, DemoRun
from cpu_demo.state import STATE_FILE, StageState, fingerprint
from utils.settings import Choice, Number, check_settings

log = logging.getLogger(__name__)

REPORT_FILES = ("report.md", "report.json", "overview.png", "figures")

#: What ``demo.py`` checks before any work.
SETTINGS = (
    Choice("demo.fast", (True, False)),
    Number("demo.seed", low=0, integer=True),
    Number("demo.augmentation.copies_per_photo", low=1, high=10_000, integer=True),
    Number("demo.augmentation.detect_pad", low=0, high=1),
    Number("demo.augmentation.framing.size", low=16, high=4096, integer=True),
    Number("demo.sampling.eta", low=0, high=1),
    Number("demo.sampling.clip_x0", low=0, low_open=True, optional=True),
    Number("demo.alignment.upscale_to", low=16, high=4096, integer=True),
    Number("demo.alignment.min_face_size", low=1, high=4096, integer=True),
    Number("demo.fr_threshold", low=-1, high=1),
    *(Number(f"demo.profiles.{profile}.{key}", low=low, high=10**6, integer=True)
      for profile in ("full", "fast")
      for key, low in (("train_steps", 1), ("train_checkpoint_every", 1), ("train_log_every", 1),
                       ("samples_per_identity", 2), ("ddim_steps", 1), ("sample_batch", 1))),
)


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """What the outputs depend on: the demo settings (without where to stop) and the device."""
    settings = OmegaConf.to_container(cfg.demo, resolve=True)
    settings.pop("until", None)
    settings.pop("output_dir", None)
    return {"device": str(cfg.device), **settings}


def _start_over(out: Path) -> None:
    """Delete the outputs of an earlier demo run with other settings (exactly the files and folders the demo writes)."""
    for name in [*OUTPUTS.values(), *REPORT_FILES, STATE_FILE]:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _metrics(state: StageState) -> dict[str, Any]:
    """The report's numbers, taken from the stage results (all seeded: equal on every run)."""
    train, align, evaluation = state.result("train"), state.result("align"), state.result("evaluate")
    _, losses = read_losses(train["run_dir"])
    return {
        "train_start_step": train["start_step"],
        "train_end_step": train["end_step"],
        "train_final_loss": losses[-1] if losses else float("nan"),
        "generated_images": align["tiles"],
        "detected": align["detected"],
        "detected_share": align["detected_share"],
        "identities_evaluated": state.result("split")["identities"],
        **{k: v for k, v in evaluation.items() if k != "plots"},
    }


def report(run: DemoRun, state: StageState) -> Path:
    """Draw the figures and write ``report.md``, ``report.json`` and ``overview.png``."""
    out, d = run.out, run.cfg.demo
    photos = person_photos(Path(d.faces_dir))
    figures = {
        "loss": plot_loss(d.checkpoint, state.result("train")["run_dir"], out / FIGURES["loss"]),
        "samples": plot_identity_grid(Path(state.result("sample")["samples_dir"]), photos, out / FIGURES["samples"],
                                      f"generated identities ({run.profile.samples_per_identity} DDIM samples each, {run.profile.ddim_steps} steps)"),
        "aligned": plot_identity_grid(run.path("aligned"), photos, out / FIGURES["aligned"],
                                      "MTCNN-aligned 112x112 ArcFace crops of the generated images"),
    }
    hist, det = (Path(p) for p in state.result("evaluate")["plots"])
    figures.update({"histograms": hist, "det": det})
    seconds = state.seconds()
    return write_report(out, _settings(run.cfg), _metrics(state), seconds, figures)


def run_demo(cfg: DictConfig) -> Path:
    """Run (or resume) the whole demo described by ``configs/demo_config.yaml``.

    ``demo.fast`` picks the small profile; ``demo.until`` stops after the named stage.
    Returns ``report.md``, or the state file when ``demo.until`` stopped the run early.
    """
    check_settings(cfg, SETTINGS)
    d = cfg.demo
    profile = d.profiles.fast if d.fast else d.profiles.full
    if d.until is not None and d.until not in STAGES:
        raise ValueError(f"demo.until={d.until!r} is not a stage; expected one of {list(STAGES)} or null")
    run = DemoRun(cfg, profile)
    state = StageState(run.out, fingerprint(_settings(cfg)))
    if state.stale:
        log.warning("the settings differ from the earlier run in %s: starting the demo over", run.out)
        _start_over(run.out)
    started = time.perf_counter()
    for name, stage in STAGES.items():
        if state.done(name):
            log.info("stage %s: done in an earlier run (%.1f s), skipped", name, state.seconds()[name])
        else:
            log.info("stage %s ...", name)
            t0 = time.perf_counter()
            result = stage(run, state.results())
            state.record(name, result, time.perf_counter() - t0)
            log.info("stage %s: %.1f s", name, time.perf_counter() - t0)
        if name == d.until:
            log.info("stopping after stage %s (demo.until); run again without it to continue", name)
            return run.out / STATE_FILE
    path = report(run, state)
    log.info("demo finished in %.1f s (this session); report %s", time.perf_counter() - started, path)
    return path
