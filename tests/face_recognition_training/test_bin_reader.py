"""The insightface ``.bin`` reader: round trip, numpy payloads, and refusal of code-running pickles."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from face_recognition_training.bin_reader import (
    BinFileError,
    load_bin_raw,
    read_bin,
    write_bin,
)


def _images(n: int, size: int = 112) -> np.ndarray:
    """(n, size, size, 3) uint8 random images."""
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_round_trip_png(tmp_path: Path) -> None:
    images = _images(6)
    is_same = np.array([True, False, True])
    path = write_bin(tmp_path / "lfw.bin", images, is_same)
    read_images, read_same = read_bin(path)
    assert read_images.shape == (6, 112, 112, 3) and read_images.dtype == np.uint8
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_same, is_same)


def test_round_trip_jpeg_and_resize(tmp_path: Path) -> None:
    images = np.full((2, 96, 96, 3), 127, np.uint8)
    path = write_bin(tmp_path / "x.bin", images, [True], image_format="JPEG")
    read_images, _ = read_bin(path, image_size=112)
    assert read_images.shape == (2, 112, 112, 3)
    assert np.abs(read_images.astype(int) - 127).max() <= 2


def test_python2_style_and_numpy_payloads(tmp_path: Path) -> None:
    # Protocol 2 from Python 3 spells bytes as _codecs.encode; issame as a numpy bool array.
    encoded, _ = load_bin_raw(write_bin(tmp_path / "a.bin", _images(2), [False]))
    path = tmp_path / "b.bin"
    path.write_bytes(pickle.dumps((encoded, np.array([True])), protocol=2))
    read_encoded, read_same = load_bin_raw(path)
    assert read_encoded == encoded
    assert read_same.tolist() == [True]


class _Exploit:
    """Unpickles to ``os.system(<touch marker>)`` under the standard unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_bin_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Exploit(marker)], [True]), protocol=2))
    with pytest.raises(BinFileError, match=r"evil\.bin.*refused.*(posix|os|nt)\.system"):
        read_bin(path)
    assert not marker.exists()


def test_other_types_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dict.bin"
    path.write_bytes(pickle.dumps({"images": [], "issame": []}))
    with pytest.raises(BinFileError, match="dict.bin.*expected a pickled pair"):
        read_bin(path)
    path = tmp_path / "set.bin"
    path.write_bytes(pickle.dumps((set(), [True]), protocol=2))  # set() needs builtins.set
    with pytest.raises(BinFileError, match=r"set.bin.*refused.*builtin\w*\.set"):
        read_bin(path)
    path = tmp_path / "count.bin"
    path.write_bytes(pickle.dumps(([b"x"], [True])))
    with pytest.raises(BinFileError, match="count.bin.*2 x 1 images"):
        read_bin(path)


def test_missing_and_truncated(tmp_path: Path) -> None:
    with pytest.raises(BinFileError, match="does not exist"):
        read_bin(tmp_path / "nope.bin")
    path = tmp_path / "cut.bin"
    full = write_bin(tmp_path / "ok.bin", _images(2), [True]).read_bytes()
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(BinFileError, match="cut.bin is not a readable"):
        read_bin(path)
