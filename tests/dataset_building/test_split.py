"""dataset_building.split: hostile identity names are refused before anything is written; a killed split resumes clean."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataset_building.split import split_identities
from utils.image_io import read_identity, save_png_atomic, tile, write_block
from utils.names import UnsafeNameError


def files_under(root: Path) -> dict[str, bytes]:
    """Every image file under ``root`` (the dataset card beside them names its folder, so it is left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("dataset_card.")}


@pytest.mark.parametrize("identity", ["a\\b", "ctl\x01", "tab\tname", "a..b"])
def test_hostile_identity_names_are_refused_before_writing(tmp_path: Path, identity: str) -> None:
    """Names that are legal on disk but not as identities (backslash, control characters, '..')."""
    images = np.zeros((2, 4, 4, 3), np.uint8)
    write_block(tmp_path / "in", "fine", images)
    save_png_atomic(tile(images), tmp_path / "in" / f"{identity}.grid1x2.png")
    with pytest.raises(UnsafeNameError) as err:
        split_identities(tmp_path / "in", tmp_path / "out")
    assert f"identity name in {tmp_path / 'in'} {identity!r}" in str(err.value)
    assert not (tmp_path / "out").exists(), "nothing may be written when a name is refused"


def test_killed_split_removes_its_temporaries_on_rerun(tmp_path: Path, kill_switch) -> None:
    rng = np.random.default_rng(0)
    for k in range(3):
        write_block(tmp_path / "in", f"id{k}", rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8))
    split_identities(tmp_path / "in", tmp_path / "straight")
    out = tmp_path / "run" / "out"
    # boundaries: id0 mkdtemp, id0 rename, id1 mkdtemp, *id1 rename*: killed with id1's images in a temporary folder
    switch = kill_switch(out, tmp_path / "run", tmp_path / "killed", kill_at=4)
    with pytest.raises(switch.killed):
        split_identities(tmp_path / "in", out)
    killed_out = tmp_path / "killed" / "out"
    assert sorted(p.name.split(".")[1] for p in killed_out.iterdir() if p.name.startswith(".")) == ["id1"]
    kill_switch(tmp_path / "none", tmp_path, tmp_path / "unused")
    summary = split_identities(tmp_path / "in", killed_out)
    assert summary["identities"] == 3
    assert files_under(killed_out) == files_under(tmp_path / "straight")
    assert [p.name for p in killed_out.iterdir() if p.name.startswith(".")] == []
    assert read_identity(killed_out / "id1").shape == (4, 4, 4, 3)
