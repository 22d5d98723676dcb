"""utils.names: one name check for every writer; hostile identity names never leave the output folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from utils.image_io import write_block, write_image_folder
from utils.names import UnsafeNameError, check_name, safe_child

#: names a contexts/embeddings file or a folder listing could carry, and the reason each is refused
HOSTILE = {
    "../../x": "path separator",
    "a/b": "path separator",
    "a\\b": "path separator",
    "..": "'..'",
    "a..b": "'..'",
    ".hidden": "starts with '.'",
    "\x00": "control character",
    "x\ny": "control character",
    "tab\there": "control character",
    "": "is empty",
}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_check_name_refuses_with_the_reason(name: str) -> None:
    with pytest.raises(UnsafeNameError) as err:
        check_name(name, "identity name in contexts.npz")
    message = str(err.value)
    assert message.startswith(f"identity name in contexts.npz {name!r}") and HOSTILE[name] in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["id_00042", "Grace Hopper", "0", "x.y", "名前", "a-b_c+d"])
def test_ordinary_names_pass(name: str, tmp_path: Path) -> None:
    assert check_name(name) == name
    assert safe_child(tmp_path, name) == tmp_path / name


@pytest.mark.parametrize("writer", [write_block, write_image_folder])
def test_writers_refuse_hostile_names_and_write_nothing(tmp_path: Path, writer) -> None:
    images = np.zeros((2, 4, 4, 3), np.uint8)
    out = tmp_path / "out"
    out.mkdir()
    absolute = str(tmp_path / "elsewhere" / "abs")
    for name in [*HOSTILE, absolute]:
        with pytest.raises(UnsafeNameError, match=f"identity name for {out}"):
            writer(out, name, images)
    assert files_under(tmp_path) == ["out"], "a hostile name wrote something"
    assert writer(out, "ok", images).parent == out


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "linked").symlink_to(outside, target_is_directory=True)
    (out / "blocky.grid1x2.png").symlink_to(outside / "target.png")
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(UnsafeNameError, match=r"'linked': .* resolves to .*outside, outside the output folder"):
        write_image_folder(out, "linked", images)
    with pytest.raises(UnsafeNameError, match="outside the output folder"):
        write_block(out, "blocky", images)
    assert files_under(outside) == []
