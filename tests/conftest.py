"""Shared pytest fixtures: the reference facts in ``../shared/reference``, one-thread torch."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = PROJECT_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The folder with NOTES.md, manifests/ and fixtures/ made with the original code."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference folder {REFERENCE_DIR} is absent (it sits beside the project checkout)")
    return REFERENCE_DIR


def load_fixture(reference_dir: Path, name: str) -> dict:
    """Load one numeric fixture (plain tensors and dicts, so ``weights_only=True`` works)."""
    return torch.load(reference_dir / "fixtures" / name, map_location="cpu", weights_only=True)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tiny models: on a shared 2-core machine two OpenMP threads oversubscribe
    the cores and make small steps up to 10x slower. Use with ``pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
