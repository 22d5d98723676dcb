"""``run_demo(cfg)``: run the demo's stages in order, skip the finished ones, time each, write the report."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cpu_demo.report import FIGURES, plot_identity_grid, plot_novelty, write_report
from cpu_demo.run import DemoRun
from cpu_demo.stages import OUTPUTS, STAGES
from cpu_demo.state import STATE_FILE, StageState, fingerprint
from dataset_building.card import sha256_file
from diffusion.generation import checkpoint_path
from utils.settings import Choice, Number, check_settings

log = logging.getLogger(__name__)

REPORT_FILES = ("report.md", "report.json", "overview.png", "figures")

#: What ``demo.py`` checks before any work (sampling.* are checked by sample.py's own rules).
SETTINGS = (
    Choice("demo.fast", (True, False)),
    Number("demo.seed", low=0, integer=True),
    Number("demo.contexts.spread", low=0),
    Number("demo.contexts.separability_threshold", low=-1, high=1, optional=True),
    Number("demo.alignment.pad", low=0, high=1),
    Number("demo.alignment.min_face_size", low=1, high=4096, integer=True),
    Choice("demo.alignment.just_resize_if_fail", (True, False)),
    Number("demo.upscale_to", low=16, high=4096, integer=True),
    Number("demo.fr_threshold", low=-1, high=1),
    *(Number(f"demo.profiles.{profile}.{key}", low=1 if key == "sample_batch" else 2, high=10**6, integer=True)
      for profile in ("full", "fast")
      for key in ("identities", "images_per_identity", "table_identities", "table_images", "sample_batch")),
)


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """What the outputs depend on: the demo settings (without where to stop), the device, and the bytes of the
    shipped model and training embeddings (a new checkpoint makes the earlier outputs stale)."""
    settings = OmegaConf.to_container(cfg.demo, resolve=True)
    settings.pop("until", None)
    settings.pop("output_dir", None)
    t = cfg.demo.testbed
    model = checkpoint_path(Path(t.checkpoint), t.which)
    for path, what in ((model, "demo.testbed.checkpoint"), (Path(t.train_embeddings), "demo.testbed.train_embeddings")):
        if not path.is_file():
            raise FileNotFoundError(f"{what}: {path} does not exist; expected the shipped testbed (data/testbed/"
                                    "SOURCES.md: python build_testbed.py, then python main.py experiment=testbed)")
    files = {"checkpoint_sha256": sha256_file(model), "train_embeddings_sha256": sha256_file(t.train_embeddings)}
    return {"device": str(cfg.device), **settings, "files": files}


def _start_over(out: Path) -> None:
    """Delete the outputs of an earlier demo run with other settings (exactly the files and folders the demo writes)."""
    for name in [*OUTPUTS.values(), *REPORT_FILES, STATE_FILE]:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _metrics(run: DemoRun, state: StageState) -> dict[str, Any]:
    """The report's numbers, taken from the stage results (all seeded: equal on every run on one machine)."""
    align, evaluation, novelty = state.result("align"), state.result("evaluate"), state.result("novelty")
    return {
        "identities": int(run.profile.identities),
        "images_per_identity": int(run.profile.images_per_identity),
        "generated_images": align["tiles"],
        "detected": align["detected"],
        "detected_share": align["detected_share"],
        "identities_evaluated": state.result("split")["identities"],
        "images_evaluated": state.result("split")["images"],  # detected faces of identities with two or more
        **{k: v for k, v in evaluation.items() if k != "plots"},
        **{k: novelty[k] for k in ("novelty_max_cos_mean", "copy_share", "leakage_share")},
    }


def report(run: DemoRun, state: StageState) -> Path:
    """Draw the figures and write ``report.md``, ``report.json`` and ``overview.png``."""
    out, d = run.out, run.cfg.demo
    samples = Path(state.result("sample")["samples_dir"])
    s = run.script_config("sample_config", {"sampling": d.sampling}).sampling  # sample.py's defaults + the demo's
    sampling = f"{s.sampler}, {s.steps or 'T'} steps"
    if s.sampler != "ddpm":
        sampling += f", {s.timestep_spacing} spacing"
    if s.guidance_scale != 1.0:
        sampling += f", guidance {s.guidance_scale:g}"
    if s.negative.mode is not None:
        sampling += f", negative contexts {s.negative.mode} ({s.negative.scale:g})"
    figures = {
        "identities": plot_identity_grid(samples, out / FIGURES["identities"],
                                         f"novel identities, one invented person per row\n{sampling}"),
        "novelty": plot_novelty(samples, state.result("novelty"), out / FIGURES["novelty"]),
    }
    hist, det = (Path(p) for p in state.result("evaluate")["plots"])
    figures.update({"histograms": hist, "det": det})
    sections = {"settings": _settings(run.cfg), "novelty": state.result("novelty"),
                "settings_table": state.result("settings"), "sampling": sampling,
                "contexts": d.contexts.source if d.contexts.source != "fitted_gaussian"
                else f"fitted_gaussian of {Path(d.testbed.train_embeddings).name}"}
    return write_report(out, sections, _metrics(run, state), state.seconds(), figures)


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
