"""The filter step end to end: blocks + embeddings -> filter_identities.py (composed config) -> split with the report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import split_identity_blocks
from dataset_building.filter_report import FilterReport
from dataset_building.filters import filter_from_config
from dataset_building.split import split_from_config
from embedding.files import save_embeddings
from utils.config import compose
from utils.image_io import read_image, write_block

N_IDS, N_IMAGES = 12, 6


def split_old_command_line(argv: list[str]) -> dict[str, int]:
    """``python split_identity_blocks.py <argv>`` (the old argparse form), run in-process."""
    return split_from_config(compose("split_config", split_identity_blocks.OLD_COMMAND_LINE(argv)))


def make_set(root: Path) -> Path:
    """Aligned blocks ``<i>.grid2x3.png`` whose tile k of identity i is filled with (k, i, 0), and their embeddings.

    Embeddings: identity i around its own axis; tile 5 of every third identity is an outlier, identity 3
    is loose (low consistency), identity 10 is a near copy of identity 4.
    """
    rng = np.random.default_rng(0)
    axes = np.eye(32)[:N_IDS]
    axes[10] = axes[4]
    spread = np.full(N_IDS, 0.08)
    spread[3] = 0.6
    x = axes[:, None, :] + spread[:, None, None] * rng.standard_normal((N_IDS, N_IMAGES, 32))
    x[::3, 5] = rng.standard_normal((len(x[::3]), 32))
    names, labels = [], []
    for i in range(N_IDS):
        tiles = np.zeros((N_IMAGES, 8, 8, 3), np.uint8)
        tiles[..., 0] = np.arange(N_IMAGES)[:, None, None]
        tiles[..., 1] = i
        write_block(root / "aligned", str(i), tiles)
        names += [f"{i}/{k}" for k in range(N_IMAGES)]
        labels += [i] * N_IMAGES
    return save_embeddings(root / "embeddings.npz", names, x.reshape(-1, 32), np.array(labels))


def test_filter_then_split_gives_exactly_n_by_k_of_the_kept_images(tmp_path: Path) -> None:
    embeddings = make_set(tmp_path)
    overrides = [f"filter.embeddings={embeddings}", f"filter.report={tmp_path / 'report.json'}",
                 "filter.max_z=2", "filter.min_consistency=0.5", "filter.max_centre_similarity=0.9",
                 "filter.separability_order=name", "filter.identities=8", "filter.images_per_identity=5",
                 "filter.identities_per_chunk=5"]
    path = filter_from_config(compose("filter_config", overrides))
    report = FilterReport.load(path)
    # tile 5 of identities 0, 6, 9 (z about -2.23, near the bound -sqrt(5) for one image of 6); in the loose
    # identity 3 it is not an outlier
    assert [row[:4] for row in report.dropped_images] == [[i, 5, "5", "z_score"] for i in ("0", "6", "9")]
    assert {r[0]: r[2] for r in report.dropped_identities} == {"3": "low_consistency", "10": "similar_centre",
                                                              "9": "beyond_n", "11": "beyond_n"}
    assert next(r for r in report.dropped_identities if r[0] == "10")[4] == "4"  # too close to the kept identity 4
    assert list(report.identities) == ["0", "1", "2", "4", "5", "6", "7", "8"]
    assert report.identities["0"]["kept"] == [0, 1, 2, 3, 4] and report.identities["1"]["kept"] == [0, 1, 2, 3, 4]
    # the same command again: nothing to do; other settings: refused
    assert filter_from_config(compose("filter_config", overrides)) == path
    with pytest.raises(ValueError, match="exists with other settings or input"):
        filter_from_config(compose("filter_config", overrides + ["filter.max_z=3"]))

    out = tmp_path / "dataset"
    summary = split_old_command_line([str(tmp_path / "aligned"), str(out), "--filter-report", str(path),
                                          "--identities", "8", "--images-per-identity", "5"])
    assert summary == {"identities": 8, "images": 40, "too_few": 0, "left_out": 0}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(report.identities)
    card = json.loads((out / "dataset_card.json").read_text())  # the card records the filter step
    assert card["filters"]["dropped"] == report.counts and card["filters"]["kept_images"] == report.kept_images
    for identity, entry in report.identities.items():
        files = sorted((out / identity).iterdir(), key=lambda p: int(p.stem))
        tiles = [read_image(f) for f in files]
        assert [int(t[0, 0, 0]) for t in tiles] == entry["kept"] and all(t[0, 0, 1] == int(identity) for t in tiles)

    # a further cut of a report's set: the first N in its order, the first K of each identity's kept images
    summary = split_old_command_line([str(tmp_path / "aligned"), str(tmp_path / "small"), "--filter-report",
                                          str(path), "--identities", "3", "--images-per-identity", "2"])
    assert summary["identities"] == 3 and sorted(p.name for p in (tmp_path / "small").iterdir() if p.is_dir()) == ["0", "1", "2"]
    with pytest.raises(ValueError, match=r"only 0 of 8 identities have >= 6 images, fewer than --identities 8"):
        split_old_command_line([str(tmp_path / "aligned"), str(tmp_path / "x"), "--filter-report", str(path),
                                    "--identities", "8", "--images-per-identity", "6"])


def test_split_refuses_a_report_of_other_images(tmp_path: Path) -> None:
    embeddings = make_set(tmp_path)
    path = filter_from_config(compose("filter_config", [f"filter.embeddings={embeddings}",
                                                        f"filter.report={tmp_path / 'r.json'}"]))
    (tmp_path / "aligned" / "7.grid2x3.png").unlink()
    with pytest.raises(ValueError, match="r.json keeps identity '7', which is not in the input folder"):
        split_old_command_line([str(tmp_path / "aligned"), str(tmp_path / "out"), "--filter-report", str(path)])
    write_block(tmp_path / "aligned", "7", np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="identity '7' has 4 images in the input folder but 6 in the report"):
        split_old_command_line([str(tmp_path / "aligned"), str(tmp_path / "out"), "--filter-report", str(path)])


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    embeddings = make_set(tmp_path)
    cfg = compose("filter_config", [f"filter.embeddings={embeddings}", f"filter.report={tmp_path / 'r.json'}",
                                    "filter.min_consistency=nan"])
    with pytest.raises(ValueError, match="filter.min_consistency must be a finite number in"):
        filter_from_config(cfg)
    cfg = compose("filter_config", [f"filter.embeddings={tmp_path / 'none.npz'}", f"filter.report={tmp_path / 'r.json'}"])
    with pytest.raises(FileNotFoundError, match="none.npz does not exist"):
        filter_from_config(cfg)
