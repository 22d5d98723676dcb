"""dataset_building.filters: each filter against hand-made sets and float64 loops; streaming; the report."""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from dataset_building.filter_report import FilterReport
from dataset_building.filters import FilterSettings, consistency_from_sums, filter_arrays, run_filters
from embedding.files import save_embeddings
from embedding.identity_chunks import chunks_from_arrays, chunks_from_npz
from embedding.similarity import greedy_separable


def clustered(n_ids: int, n_images: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Identities around random unit centres with per-identity noise and a few outlier images."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim))
    noise = rng.uniform(0.3, 1.2, n_ids)[:, None, None] * rng.standard_normal((n_ids, n_images, dim)) / np.sqrt(dim) * 3
    x = centres[:, None, :] / np.linalg.norm(centres, axis=1)[:, None, None] + noise
    outliers = rng.random((n_ids, n_images)) < 0.08
    x[outliers] = rng.standard_normal((int(outliers.sum()), dim))
    labels = np.repeat(np.arange(n_ids), n_images)
    names = [f"{i}/{k}" for i in range(n_ids) for k in range(n_images)]
    return x.reshape(-1, dim).astype(np.float32), labels, names


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_per_image_filter_on_a_hand_made_identity() -> None:
    # x_k = cos(t_k) e0 + sin(t_k) e_(k+1): sum s = (sum cos t) e0 + sum sin(t_k) e_(k+1), so in closed form
    # c_k = <x_k, s> / |s| = (cos(t_k) sum_j cos(t_j) + sin(t_k)^2) / |s|
    t = np.array([0.1, 0.15, 0.2, 0.1, 0.12, 1.3])
    x = np.zeros((6, 8))
    x[:, 0] = np.cos(t)
    x[np.arange(6), np.arange(1, 7)] = np.sin(t)
    norm_s = np.sqrt(np.cos(t).sum() ** 2 + (np.sin(t) ** 2).sum())
    c = (np.cos(t) * np.cos(t).sum() + np.sin(t) ** 2) / norm_s
    z = (c - c.mean()) / c.std()
    labels = np.zeros(6, int)
    report = filter_arrays(x, labels, FilterSettings(min_centre_cosine=float(c[:5].min() - 1e-3)))
    assert report.identities["0"]["kept"] == [0, 1, 2, 3, 4]
    (row,) = report.dropped_images
    assert row[:4] == ["0", 5, "5", "below_min_cosine"]
    np.testing.assert_allclose(row[4:], [c[5], z[5]], atol=1e-4)
    # the z rule: z[5] is about -2.2, the others above -0.5
    assert filter_arrays(x, labels, FilterSettings(max_z=2.0)).identities["0"]["kept"] == [0, 1, 2, 3, 4]
    assert filter_arrays(x, labels, FilterSettings(max_z=2.3)).identities["0"]["kept"] == list(range(6))
    # identical images: the std floor keeps all of them
    same = filter_arrays(np.tile(x[:1], (5, 1)), np.zeros(5, int), FilterSettings(max_z=0.1))
    assert same.identities["0"]["kept"] == list(range(5)) and same.dropped_images == []


def reference_filters(x: np.ndarray, labels: np.ndarray, s: FilterSettings) -> dict[int, tuple[list[int], float]]:
    """Filters 1-2 written per identity in float64: {label: (kept indices, consistency)} of the survivors."""
    out = {}
    for label in np.unique(labels):
        v = unit(x[labels == label])
        c = v @ unit(v.sum(axis=0))
        std = max(c.std(), 1e-6)
        keep = [k for k in range(len(v)) if not (s.min_centre_cosine is not None and c[k] < s.min_centre_cosine)
                and not (s.max_z is not None and c.mean() - c[k] > s.max_z * std)]
        if s.images_per_identity is not None and s.image_selection == "centre":
            keep = sorted(sorted(keep, key=lambda k: -c[k])[: s.images_per_identity])
        elif s.images_per_identity is not None:
            keep = keep[: s.images_per_identity]
        pairs = [v[i] @ v[j] for i, j in combinations(keep, 2)]
        consistency = float(np.mean(pairs)) if pairs else float("nan")
        if len(keep) < s.min_kept_images or (s.min_consistency is not None and consistency < s.min_consistency):
            continue
        out[int(label)] = (keep, consistency)
    return out


@pytest.mark.parametrize("settings", [
    FilterSettings(min_centre_cosine=0.5, min_images=3),
    FilterSettings(max_z=2.0, min_consistency=0.3),
    FilterSettings(min_centre_cosine=0.4, max_z=1.5, min_consistency=0.35, images_per_identity=6),
])
def test_image_and_identity_filters_match_a_float64_loop(settings: FilterSettings) -> None:
    x, labels, names = clustered(40, 10, 32, seed=0)
    report = filter_arrays(x, labels, settings, names)
    expected = reference_filters(x, labels, settings)
    assert 0 < len(expected) < 40
    assert list(report.identities) == [str(k) for k in sorted(expected)]
    for label, (keep, consistency) in expected.items():
        assert report.identities[str(label)]["kept"] == keep
        assert report.identities[str(label)]["consistency"] == pytest.approx(consistency, abs=2e-6)
    dropped = sum(report.counts["identity_filter"].values())
    assert dropped == 40 - len(expected) and len(report.dropped_identities) == dropped


def test_consistency_closed_form_equals_the_pairwise_mean() -> None:
    rng = np.random.default_rng(1)
    for n in (2, 3, 17):
        v = unit(rng.standard_normal((n, 64)) + 2 * rng.standard_normal(64))
        brute = np.mean([v[i] @ v[j] for i in range(n) for j in range(n) if i != j])
        got = consistency_from_sums(v.sum(axis=0)[None], np.array([(v * v).sum()]), np.array([n]))
        np.testing.assert_allclose(got, [brute], rtol=0, atol=1e-12)
    assert np.isnan(consistency_from_sums(np.ones((1, 3)), np.ones(1), np.array([1])))[0]


def test_separability_keeps_the_more_consistent_or_the_first_named_identity() -> None:
    # identities "2" and "10" share a centre direction; "10" is the tighter one; "7" is elsewhere
    rng = np.random.default_rng(2)
    e = np.eye(16)
    tight = unit(e[0] + 0.05 * rng.standard_normal((5, 16)))
    loose = unit(e[0] + 0.2 * rng.standard_normal((5, 16)))
    apart = unit(e[1] + 0.1 * rng.standard_normal((5, 16)))
    x = np.concatenate([loose, tight, apart])
    names = [f"{i}/{k}" for i in ("2", "10", "7") for k in range(5)]
    labels = np.repeat([0, 1, 2], 5)
    by_consistency = filter_arrays(x, labels, FilterSettings(max_centre_similarity=0.85), names)
    assert list(by_consistency.identities) == ["7", "10"]
    (row,) = by_consistency.dropped_identities
    assert row[:3] == ["2", "separability", "similar_centre"] and row[4] == "10"
    centre = {n: unit(v.sum(axis=0)) for n, v in (("2", loose), ("10", tight))}
    assert row[3] == pytest.approx(centre["2"] @ centre["10"], abs=1e-5)
    by_name = filter_arrays(x, labels, FilterSettings(max_centre_similarity=0.85, separability_order="name"), names)
    assert list(by_name.identities) == ["2", "7"]  # natural order: "2" < "7" < "10"


def test_separability_equals_the_greedy_rule_on_centres() -> None:
    x, labels, names = clustered(300, 4, 6, seed=3)
    s = FilterSettings(max_centre_similarity=0.8, separability_order="name")
    report = run_filters(chunks_from_arrays(x, labels, names, identities_per_chunk=37), s, chunk_size=16)
    centres = np.stack([unit(unit(x[labels == k]).sum(axis=0)) for k in range(300)]).astype(np.float32)
    kept = greedy_separable(centres, 0.8).kept  # natural order of "0".."299" is the label order
    assert sorted(int(k) for k in report.identities) == sorted(kept.tolist())
    assert 30 < len(kept) < 270
    assert report.counts["separability"]["similar_centre"] == 300 - len(kept)


@pytest.mark.parametrize("identity_selection, image_selection", [("name", "index"), ("consistency", "centre")])
def test_cut_to_exactly_n_by_k(identity_selection: str, image_selection: str) -> None:
    x, labels, names = clustered(30, 8, 32, seed=4)
    s = FilterSettings(max_z=2.5, identities=12, images_per_identity=5,
                       identity_selection=identity_selection, image_selection=image_selection)
    report = filter_arrays(x, labels, s, names)
    assert len(report.identities) == 12 and all(len(e["kept"]) == 5 for e in report.identities.values())
    assert report.counts["kept"] == {"identities": 12, "images": 60}
    passed = reference_filters(x, labels, FilterSettings(max_z=2.5, images_per_identity=5, image_selection=image_selection))
    if identity_selection == "name":
        assert list(report.identities) == [str(k) for k in sorted(passed)[:12]]
    else:  # the 12 most consistent, listed in name order
        best = sorted(passed, key=lambda k: -passed[k][1])[:12]
        assert list(report.identities) == [str(k) for k in sorted(best)]
        for name, entry in report.identities.items():  # the 5 images closest to the identity's centre
            v = unit(x[labels == int(name)])
            c = v @ unit(v.sum(axis=0))
            allowed = [k for k in range(8) if c.mean() - c[k] <= 2.5 * c.std()]
            assert entry["kept"] == sorted(sorted(allowed, key=lambda k: -c[k])[:5])
    assert report.counts["identity_cut"]["beyond_n"] == len(passed) - 12


def test_streaming_from_npz_equals_arrays_in_one_chunk(tmp_path: Path) -> None:
    x, labels, names = clustered(50, 6, 16, seed=5)
    s = FilterSettings(min_centre_cosine=0.3, max_z=2.0, min_consistency=0.2, max_centre_similarity=0.5,
                       identities=15, images_per_identity=4)
    whole = run_filters(chunks_from_arrays(x, labels, names, identities_per_chunk=10**6), s)
    path = save_embeddings(tmp_path / "e.npz", names, x, labels)
    info, chunks = chunks_from_npz(path, identities_per_chunk=3)
    streamed = run_filters(chunks, s, {"embeddings": str(path), **info}, chunk_size=5)
    assert streamed.identities == whole.identities
    assert streamed.dropped_images == whole.dropped_images and streamed.counts == whole.counts
    assert streamed.dropped_identities == whole.dropped_identities
    assert all(n > 0 for step in whole.counts.values() for n in step.values())  # every filter dropped something


def test_report_round_trips(tmp_path: Path) -> None:
    x, labels, names = clustered(20, 6, 16, seed=6)
    s = FilterSettings(max_z=1.5, min_consistency=0.05, max_centre_similarity=0.5, identities=5, images_per_identity=4)
    report = filter_arrays(x, labels, s, names, report=tmp_path / "r.json")
    back = FilterReport.load(tmp_path / "r.json")
    assert back == report and back.kept_images == 20
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["settings"]["max_z"] == 1.5 and data["dropped_images"]["columns"][3] == "reason"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    x, labels, names = clustered(10, 4, 8, seed=7)
    cases = [
        (FilterSettings(min_centre_cosine=float("nan")), "filter.min_centre_cosine must be a finite number in"),
        (FilterSettings(max_centre_similarity=float("inf")), "filter.max_centre_similarity must be a finite number"),
        (FilterSettings(max_z=0.0), r"filter.max_z must be a finite number > 0 or null, found 0.0"),
        (FilterSettings(min_images=0), "filter.min_images must be an integer >= 1, found 0"),
        (FilterSettings(separability_order="random"), "filter.separability_order must be one of"),
        (FilterSettings(identities=5), "filter.identities=N needs filter.images_per_identity=K"),
        (FilterSettings(identities=11, images_per_identity=4), "only 10 of 10 identities pass the filters"),
        (FilterSettings(min_consistency=0.99, identities=5, images_per_identity=2),
         r"only \d of 10 identities pass the filters \(low_consistency \d+\), fewer than filter.identities=5"),
    ]
    for settings, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            filter_arrays(x, labels, settings, names)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="40 embeddings, labels of shape \\(39,\\)"):
        filter_arrays(x, labels[:-1], FilterSettings())
    with pytest.raises(ValueError, match="has an all-zero embedding"):
        filter_arrays(np.zeros_like(x), labels, FilterSettings())
    (tmp_path / "r.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="r.json is not a filter report"):
        FilterReport.load(tmp_path / "r.json")
