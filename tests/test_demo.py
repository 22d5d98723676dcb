"""demo.py: ``demo.fast=true`` end to end on the shipped testbed model (interrupted once and resumed), the relations
its numbers must show, numbers recomputed from the files it wrote, settings changes and bad inputs."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from omegaconf.errors import ConfigKeyError

from cpu_demo import run_demo
from cpu_demo.run import DemoRun
from cpu_demo.stages import OUTPUTS, STAGES
from cpu_demo.state import STATE_FILE, StageState, fingerprint
from diffusion.generation import to_uint8
from embedding.files import load_embeddings
from models.dcgan import generate_faces, load_dcgan_generator
from testbed.faces import resize_images
from utils.config import compose
from utils.image_io import read_image


def _config(out: Path, *overrides: str) -> DictConfig:
    return compose("demo_config", ["demo.fast=true", "device=cpu", f"demo.output_dir={out}", *overrides])


def _interrupt(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    raise KeyboardInterrupt("simulated interruption")


def _must_not_run(name: str):
    def stage(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
        raise AssertionError(f"stage {name} finished before the interruption but ran again")

    return stage


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fast demo, killed after sampling, then resumed with the finished stages forbidden to run again."""
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(STAGES, "align", _interrupt)
            with pytest.raises(KeyboardInterrupt):
                run_demo(_config(out))
        finished = list(json.loads((out / STATE_FILE).read_text())["stages"])
        report_after_kill = (out / "report.json").exists()
        with pytest.MonkeyPatch.context() as patch:
            for name in finished:
                patch.setitem(STAGES, name, _must_not_run(name))
            report_md = run_demo(_config(out))
    finally:
        torch.set_num_threads(threads)
    return {"out": out, "finished": finished, "report_after_kill": report_after_kill, "report_md": report_md,
            "report": json.loads((out / "report.json").read_text()), "cfg": _config(out)}


def test_interrupted_demo_resumes_without_redoing_finished_stages(fast_demo: dict[str, Any]) -> None:
    assert fast_demo["finished"] == ["contexts", "sample"] and not fast_demo["report_after_kill"]
    assert list(fast_demo["report"]["seconds"]) == list(STAGES)


def test_report_files_exist_and_are_read_back(fast_demo: dict[str, Any]) -> None:
    out, report = fast_demo["out"], fast_demo["report"]
    md = fast_demo["report_md"].read_text()
    assert fast_demo["report_md"] == out / "report.md"
    assert md.index("## 1. New people") < md.index("## 2.") < md.index("## 3.") < md.index("## 4.") < md.index("## Key")
    for image in ("overview.png", "figures/novel_identities.png", "figures/novelty_check.png",
                  "evaluation/score_histograms.png", "settings_table/settings_identities.png"):
        assert read_image(out / image).ndim == 3, image
        assert f"]({image})" in md, image
    cfg = fast_demo["cfg"]
    assert list(report["settings_table"]) == list(cfg.demo.settings_table)
    for name, row in report["settings_table"].items():
        assert row["n_identities"] == cfg.demo.profiles.fast.table_identities
        assert f"| {name} |" in md or f"| **{name}** (default) |" in md
    metrics = report["metrics"]
    assert metrics["identities"] == cfg.demo.profiles.fast.identities
    assert metrics["generated_images"] == metrics["identities"] * metrics["images_per_identity"]
    assert (out / OUTPUTS["dataset"] / "dataset_card.md").is_file()


def _leave_one_out_match(e: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose nearest centre (cosine, float64) is their own; the own centre without the row itself."""
    e = e.astype(np.float64)
    ids = np.unique(labels)
    hits = []
    for i, (row, label) in enumerate(zip(e, labels)):
        scores = {}
        for k in ids:
            members = [j for j in np.flatnonzero(labels == k) if j != i]
            centre = e[members].sum(axis=0)
            scores[k] = row @ centre / np.linalg.norm(centre)
        if (labels == label).sum() >= 2:
            hits.append(max(scores, key=scores.get) == label)
    return float(np.mean(hits))


def test_numbers_agree_with_the_files_the_demo_wrote(fast_demo: dict[str, Any]) -> None:
    out, report, cfg = fast_demo["out"], fast_demo["report"], fast_demo["cfg"]
    metrics = report["metrics"]
    generated = load_embeddings(out / OUTPUTS["generated_embeddings"])
    train = load_embeddings(cfg.demo.testbed.train_embeddings)
    labels = np.asarray(generated.labels)
    assert len(generated) == metrics["images_evaluated"] <= metrics["detected"]
    assert len(np.unique(labels)) == metrics["identities_evaluated"]
    assert metrics["detected_share"] == metrics["detected"] / metrics["generated_images"]
    assert metrics["identity_match"] == pytest.approx(_leave_one_out_match(generated.embeddings, labels), abs=1e-9)
    e = generated.embeddings.astype(np.float64)
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same), k=1)
    sims = e @ e.T
    assert metrics["genuine_mean"] == pytest.approx(sims[same & upper].mean(), abs=1e-5)
    assert metrics["impostor_mean"] == pytest.approx(sims[~same & upper].mean(), abs=1e-5)
    # novelty: per identity the training face with the highest mean cosine to its images, and its own genuine mean
    t = train.embeddings.astype(np.float64)
    rows = {r["identity"]: r for r in report["novelty"]}
    copies = []
    for label in np.unique(labels):
        mine = labels == label
        identity = generated.names[int(np.flatnonzero(mine)[0])].split("/")[0]
        scores = (e[mine] @ t.T).mean(axis=0)
        row = rows[identity]
        assert row["nearest_train"] == train.names[int(scores.argmax())]
        assert row["cos"] == pytest.approx(scores.max(), abs=1e-5)
        if mine.sum() >= 2:
            own = (e[mine] @ e[mine].T)[np.triu_indices(int(mine.sum()), k=1)].mean()
            assert row["genuine_mean"] == pytest.approx(own, abs=1e-5) and row["copy"] == bool(scores.max() > own)
            copies.append(row["copy"])
    assert metrics["copy_share"] == pytest.approx(np.mean(copies), abs=1e-12)
    # the novelty figure's training faces are the DCGAN faces of their seeds, downsampled as the testbed was built
    figure = json.loads((out / STATE_FILE).read_text())["stages"]["novelty"]["result"]["figure"]
    shown = [rows[name]["nearest_train"] for name in figure]
    generator = load_dcgan_generator(cfg.demo.testbed.dcgan_weights)
    faces = resize_images(to_uint8(generate_faces(generator, [int(s) for s in shown])), 32)
    for name, face in zip(shown, faces):
        np.testing.assert_array_equal(read_image(out / OUTPUTS["novelty"] / f"{name}.png"), face)


def test_novel_identities_are_distinct_people(fast_demo: dict[str, Any]) -> None:
    """Relations any working model shows on its novel identities (exact numbers vary between CPUs)."""
    metrics = fast_demo["report"]["metrics"]
    assert metrics["detected_share"] >= 0.75
    assert metrics["genuine_mean"] > metrics["impostor_mean"]
    assert metrics["identity_match"] > 0.5  # most images are nearest their own identity's centre (chance: 1/6)
    assert metrics["eer"] < 0.5 and metrics["error_rate_definition"] == "pyeer"


def test_changed_settings_start_the_demo_over(tmp_path: Path) -> None:
    run_demo(_config(tmp_path, "demo.until=contexts"))
    contexts = load_embeddings(tmp_path / OUTPUTS["contexts"] / "novel_identities.npz")
    (tmp_path / OUTPUTS["samples"]).mkdir()  # an earlier run's output
    run_demo(_config(tmp_path, "demo.until=contexts"))  # same settings: nothing to do
    assert (tmp_path / OUTPUTS["samples"]).is_dir()
    run_demo(_config(tmp_path, "demo.until=contexts", "demo.seed=1"))
    assert not (tmp_path / OUTPUTS["samples"]).exists()
    again = load_embeddings(tmp_path / OUTPUTS["contexts"] / "novel_identities.npz")
    assert again.embeddings.shape == contexts.embeddings.shape
    assert not np.allclose(again.embeddings, contexts.embeddings)
    assert list(json.loads((tmp_path / STATE_FILE).read_text())["stages"]) == ["contexts"]


def test_unknown_until_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="demo.until='nope' is not a stage"):
        run_demo(_config(tmp_path, "demo.until=nope"))


def test_missing_testbed_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"demo.testbed.checkpoint: .*ema_averaged_model.ckpt does not exist"):
        run_demo(_config(tmp_path, f"demo.testbed.checkpoint={tmp_path / 'nowhere'}"))


def test_a_misspelt_script_setting_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    run = DemoRun(cfg, cfg.demo.profiles.fast)
    assert run.script_config("sample_config", {"sampling": {"steps": 7}}).sampling.steps == 7
    with pytest.raises(ConfigKeyError, match="stepz"):
        run.script_config("sample_config", {"sampling": {"stepz": 7}})


def test_state_file_of_other_settings_is_stale(tmp_path: Path) -> None:
    state = StageState(tmp_path, fingerprint({"fast": True}))
    state.record("contexts", {"n_contexts": 5}, 1.25)
    again = StageState(tmp_path, fingerprint({"fast": True}))
    assert again.done("contexts") and again.result("contexts") == {"n_contexts": 5} and not again.stale
    other = StageState(tmp_path, fingerprint({"fast": False}))
    assert other.stale and not other.done("contexts")
    with pytest.raises(KeyError, match="has not finished"):
        other.result("contexts")
