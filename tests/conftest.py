"""Shared pytest fixtures: the reference facts in ``tests/fixtures/reference``, one-thread torch, the real photos."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: reference data shipped with the project (each sub-folder says where its numbers come from)
FIXTURES_DIR = PROJECT_ROOT / "tests" / "fixtures"
#: numbers measured from the original code (``fixtures/*.pt``) and the published checkpoints' key
#: layouts (``manifests/*.json``), each folder with an ``INDEX.json``
REFERENCE_DIR = FIXTURES_DIR / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The folder with ``manifests/`` and ``fixtures/`` made with the original code (part of the project)."""
    return REFERENCE_DIR


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tiny models: on a shared 2-core machine two OpenMP threads oversubscribe
    the cores and make small steps up to 10x slower. Use with ``pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_photos() -> dict[str, np.ndarray]:
    """Every real full-face photo the project and its dependencies ship, (H, W, 3) uint8 RGB by name.

    The 5 demo crops (128x128; Obama x3, Biden, Collins: ``data/demo/SOURCES.md``), scikit-image's
    astronaut (Eileen Collins, 512x512) and matplotlib's Grace Hopper (600x512).
    """
    from matplotlib.cbook import get_sample_data
    from PIL import Image
    from skimage.data import astronaut

    faces = sorted((PROJECT_ROOT / "data" / "demo" / "faces").glob("*.png"))
    photos = {path.stem: np.asarray(Image.open(path).convert("RGB")) for path in faces}
    photos["astronaut"] = astronaut()
    with get_sample_data("grace_hopper.jpg") as file:
        photos["grace_hopper"] = np.asarray(Image.open(file).convert("RGB"))
    return photos
