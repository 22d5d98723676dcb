"""testbed.settings and testbed.report: settings merged from one config entry each, shared contexts, the table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from embedding.files import save_embeddings
from testbed.report import SUMMARY_KEYS, markdown_table, reference_setting, settings_figure, summary_json
from testbed.settings import resolve_settings, setting_contexts
from utils.config import compose


@pytest.fixture
def quality(tmp_path: Path):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 8)) + 1.5  # an un-centred cluster (mean cosine ~0.7), as dlib embeddings
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    fit = save_embeddings(tmp_path / "train.npz", [str(i) for i in range(300)], train.astype(np.float32))
    holdout = save_embeddings(tmp_path / "holdout.npz", ["1000003", "1000007", "1000009"], train[:3].astype(np.float32))
    cfg = compose("testbed_config", [f"quality.contexts.fit_embeddings={fit}", f"quality.contexts.holdout_embeddings={holdout}"])
    return cfg.quality


def test_every_configured_setting_resolves_over_the_original_sampling(quality) -> None:
    settings = resolve_settings(quality)
    by_name = {s.name: s for s in settings}
    assert reference_setting(list(by_name)) == "ddpm1000_gauss" and quality.default in by_name
    original = compose("sample_config", ["preset=original"]).sampling  # settings say what differs from it
    ddpm = by_name["ddpm1000_gauss"].sampling
    assert ddpm.sampler == "ddpm" and ddpm.steps is None and ddpm.guidance_scale == original.guidance_scale == 1.0
    assert ddpm.negative.mode is None and ddpm.amp is None
    assert ddpm.clip_x0 == 1.0 and ddpm.batch_size == quality.sampling.batch_size  # quality.sampling over sample.py's
    assert by_name["dpmpp15_gauss_w2"].sampling.guidance_scale == 2.0
    assert by_name["dpmpp15_uniform"].contexts.source == "synthetic_uniform"
    assert by_name["dpmpp15_gauss_w3_sep0.91"].contexts.separability_threshold == 0.91
    assert set(quality.quick.settings) <= set(by_name)


def test_a_new_setting_is_one_entry_and_typos_are_rejected(quality) -> None:
    OmegaConf.set_struct(quality, False)
    quality.settings["ddim7_eta05"] = {"sampling": {"sampler": "ddim", "steps": 7, "eta": 0.5}}
    (new,) = resolve_settings(quality, ["ddim7_eta05"])
    assert (new.sampling.sampler, new.sampling.steps, new.sampling.eta) == ("ddim", 7, 0.5)
    quality.settings["typo"] = {"sampling": {"guidance": 2.0}}
    with pytest.raises(ValueError, match=r"quality.settings.typo.sampling: Key 'guidance' is not in struct"):
        resolve_settings(quality, ["typo"])
    quality.settings["bad_source"] = {"contexts": {"source": "imagined"}}
    with pytest.raises(ValueError, match="contexts.source must be one of .* found 'imagined'"):
        resolve_settings(quality, ["bad_source"])
    quality.settings["extra"] = {"sampler": "ddim"}
    with pytest.raises(ValueError, match=r"quality.settings.extra has keys \['sampler'\]"):
        resolve_settings(quality, ["extra"])
    with pytest.raises(ValueError, match=r"settings \['nope'\] are not defined"):
        resolve_settings(quality, ["nope"])


def test_settings_share_contexts_and_the_filter_keeps_the_first_that_pass(quality) -> None:
    s = {x.name: x for x in resolve_settings(quality)}
    a = setting_contexts(s["ddim50_gauss"], 10, 8, seed=0)
    b = setting_contexts(s["dpmpp15_gauss_w2"], 10, 8, seed=0)
    assert a.names == b.names and np.array_equal(a.embeddings, b.embeddings)
    assert a.names[0] == "fitted_gaussian_0"
    separated = s["dpmpp15_gauss_w3_sep0.91"]
    separated.contexts.separability_threshold = threshold = 0.8  # tighter than configured, so that it bites here
    filtered = setting_contexts(separated, 10, 8, seed=0)
    sims = filtered.embeddings @ filtered.embeddings.T
    assert (sims[~np.eye(10, dtype=bool)] < threshold).all()
    candidates = setting_contexts(s["ddim50_gauss"], 200, 8, seed=0)
    index = [candidates.names.index(n) for n in filtered.names]
    assert index[0] == 0 and index == sorted(index)
    for i in range(index[-1]):  # every skipped candidate is too close to a kept one before it
        if i not in index:
            kept_before = [j for j in index if j < i]
            assert max(candidates.embeddings[i] @ candidates.embeddings[j] for j in kept_before) >= threshold
    assert index[-1] >= 10  # some candidates were skipped
    uniform = setting_contexts(s["dpmpp15_uniform"], 4, 8, seed=0)
    assert uniform.names[0] == "synthetic_uniform_0"
    holdout = setting_contexts(s["ddim50_holdout"], 3, 8, seed=0)
    assert holdout.names == ["holdout_1000003", "holdout_1000007", "holdout_1000009"]
    with pytest.raises(ValueError, match="only 3 contexts of source holdout are available"):
        setting_contexts(s["ddim50_holdout"], 4, 8, seed=0)
    with pytest.raises(ValueError, match="gives 8-d contexts but the model expects 128-d"):
        setting_contexts(s["ddim50_gauss"], 4, 128, seed=0)


def result(eer: float, match: float) -> dict:
    return {"eer": eer, "identity_match": match, "fmr100": 0.5, "fdr": 2.0, "detected_share": 1.0,
            "genuine_mean": 0.95, "impostor_mean": 0.9, "novelty_max_cos_mean": float("nan"), "leakage_share": 0.0,
            "copy_share": 0.0, "diversity": 0.3, "pixel_diversity": 0.1, "s_per_image": 0.02,
            "n_identities_scored": 100, "eer_ci": [eer - 0.02, eer + 0.03], "identity_match_ci": [match - 0.05, match + 0.01]}


def test_table_quotes_the_change_against_ddpm_1000_and_the_json_holds_the_summary_keys() -> None:
    results = {"ddpm1000_gauss": result(0.10, 0.90), "ddim50_gauss": result(0.125, 0.85)}
    table = markdown_table(results, "ddim50_gauss", "t")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert "EER vs ddpm1000_gauss (pts)" in rows[0]
    assert rows[2].startswith("| **ddim50_gauss** (default) | 100 | 12.5 | 10.5-15.5 | 50.0 | 2.00 | 85.0 | 80.0-86.0 |")
    assert rows[2].endswith("| +2.5 | -5.0 |") and rows[1].endswith("| +0.0 | +0.0 |")
    summary = summary_json(results, "ddim50_gauss")
    assert summary["default"] == "ddim50_gauss" and set(summary["settings"]["ddpm1000_gauss"]) == set(SUMMARY_KEYS)
    assert summary["settings"]["ddim50_gauss"]["novelty_max_cos_mean"] is None  # NaN -> null in JSON
    assert "vs" not in markdown_table({"ddim50_gauss": result(0.1, 0.9)}, "ddim50_gauss").splitlines()[0]


def test_figure_has_a_row_per_setting(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 255, size=(12, 32, 32, 3), dtype=np.uint8) for name in ("a", "b", "c")}
    path = settings_figure(images, images_per_identity=3, path=tmp_path / "f.png", n_identities=4)
    with Image.open(path) as im:
        width, height = im.size
    assert width > height > 0  # three rows of 4 identities x 2 images (stacked) each
