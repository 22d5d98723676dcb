"""embedding.encoding: identity and image names of an encoded set must be single visible file names."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from embedding.encoding import encode_dataset
from utils.names import UnsafeNameError


def never_called(images: list, flip: bool = False) -> np.ndarray:
    raise AssertionError("the backend must not run before the names are checked")


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


@pytest.mark.parametrize("identity", ["a\\b", "ctl\x07", "new\nline", "x..y"])
def test_hostile_identity_folder_is_refused_before_anything_is_written(tmp_path: Path, identity: str) -> None:
    _image(tmp_path / "aligned" / "fine" / "0.png")
    _image(tmp_path / "aligned" / identity / "0.png")
    with pytest.raises(UnsafeNameError) as err:
        encode_dataset(tmp_path / "aligned", tmp_path / "out.npz", SimpleNamespace(embed=never_called))
    assert f"identity name in encode.input={tmp_path / 'aligned'} {identity!r}" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned"]


def test_hostile_image_name_is_refused(tmp_path: Path) -> None:
    _image(tmp_path / "aligned" / "id0" / "bell\x07.png")
    with pytest.raises(UnsafeNameError, match=r"image name in .*id0 'bell\\x07' contains the control character"):
        encode_dataset(tmp_path / "aligned", tmp_path / "out.npz", SimpleNamespace(embed=never_called))
    assert not (tmp_path / "out.npz").exists()
