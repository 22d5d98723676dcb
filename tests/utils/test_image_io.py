"""utils.image_io: exact grids with no blank tiles, atomic writes, exact reads, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.image_io import (
    discover_identities,
    grid_shape,
    read_block,
    read_identity,
    write_block,
    write_image_folder,
)


def test_grid_has_no_blank_tiles() -> None:
    assert grid_shape(50) == (5, 10) and grid_shape(49) == (7, 7) and grid_shape(7) == (1, 7)
    for n in range(1, 200):
        rows, cols = grid_shape(n)
        assert rows * cols == n and rows <= cols


@pytest.mark.parametrize("n, size", [(50, 16), (7, 12), (1, 9)])
def test_block_round_trip_is_exact(tmp_path: Path, n: int, size: int) -> None:
    images = np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    path = write_block(tmp_path, "id7", images)
    rows, cols = grid_shape(n)
    assert path.name == f"id7.grid{rows}x{cols}.png"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    assert np.array_equal(read_block(path), images)
    assert discover_identities(tmp_path) == {"id7": path}


def test_unreadable_block_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "3.grid5x10.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="3.grid5x10.png is not a readable image") as err:
        read_block(path)
    assert "\n" not in str(err.value)


def test_original_block_drops_blank_padding(tmp_path: Path) -> None:
    tiles = np.random.default_rng(0).integers(1, 256, (6, 8, 8, 3), dtype=np.uint8)
    grid = np.zeros((16, 32, 3), np.uint8)  # make_grid(nrow=4) of 6 tiles: 2 x 4 with 2 black tiles
    for i, t in enumerate(tiles):
        grid[(i // 4) * 8 : (i // 4 + 1) * 8, (i % 4) * 8 : (i % 4 + 1) * 8] = t
    Image.fromarray(grid).save(tmp_path / "12.png")
    assert np.array_equal(read_block(tmp_path / "12.png", tile_size=8), tiles)
    with pytest.raises(ValueError, match="pass tile_size"):
        read_block(tmp_path / "12.png")


def test_discover_blocks_folders_and_single_images(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    write_block(tmp_path, "2", images)
    write_image_folder(tmp_path, "10", images)
    Image.fromarray(images[0]).save(tmp_path / "face.jpg")
    found = discover_identities(tmp_path)
    assert list(found) == ["2", "10", "face"]
    assert np.array_equal(read_identity(found["10"]), images)
    assert read_identity(found["face"]).shape == (1, 8, 8, 3)
