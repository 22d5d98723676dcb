"""Synthetic "faces" for the FR tests: each identity is a fixed layout of coloured shapes.

Images of one identity share the layout and the shape colours; the grey level of the
background, a global shift, the shape sizes, the brightness and pixel noise vary per image.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

SIZE = 112


def identity_image(identity: int, sample_rng: np.random.Generator) -> np.ndarray:
    """(112, 112, 3) uint8 image of ``identity`` with per-image jitter drawn from ``sample_rng``."""
    layout = np.random.default_rng(1000 + identity)
    background = (int(sample_rng.integers(70, 190)),) * 3
    img = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(img)
    dx, dy = sample_rng.integers(-6, 7, 2)
    for _ in range(3):
        kind = int(layout.integers(0, 3))
        cx, cy = layout.integers(25, 87, 2) + (dx, dy)
        r = layout.integers(10, 22) * sample_rng.uniform(0.85, 1.15)
        colour = tuple(int(v) for v in layout.integers(0, 256, 3))
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    x = np.asarray(img, dtype=np.float32) * sample_rng.uniform(0.8, 1.2)
    x += sample_rng.normal(0.0, 8.0, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def make_identity_images(n_ids: int, per_id: int, seed: int) -> np.ndarray:
    """(n_ids, per_id, 112, 112, 3) uint8."""
    rng = np.random.default_rng(seed)
    return np.stack([np.stack([identity_image(k, rng) for _ in range(per_id)]) for k in range(n_ids)])


def write_class_folders(root: Path, images: np.ndarray) -> Path:
    """Write (n_ids, per_id, H, W, 3) images as ``root/id_XXX/YYY.png``."""
    for k, per_identity in enumerate(images):
        folder = root / f"id_{k:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j, image in enumerate(per_identity):
            Image.fromarray(image).save(folder / f"{j:03d}.png")
    return root


def verification_pairs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor pairs from held-out (n_ids, per_id >= 2, H, W, 3) images, alternating.

    Returns ``(pair_images (2N, H, W, 3), is_same (N,))`` with N = 2 * n_ids * (per_id - 1):
    for each identity, consecutive images form genuine pairs and the same images paired
    with the next identity form impostor pairs.
    """
    n_ids, per_id = images.shape[:2]
    pairs, same = [], []
    for k in range(n_ids):
        for j in range(per_id - 1):
            pairs += [images[k, j], images[k, j + 1]]
            same.append(True)
            pairs += [images[k, j], images[(k + 1) % n_ids, j + 1]]
            same.append(False)
    return np.stack(pairs), np.array(same)


@pytest.fixture(scope="session")
def faces() -> SimpleNamespace:
    """The synthetic-identity helpers of this module (tests cannot import a conftest directly)."""
    return SimpleNamespace(
        identity_image=identity_image,
        make_identity_images=make_identity_images,
        write_class_folders=write_class_folders,
        verification_pairs=verification_pairs,
    )
