"""Shared pytest fixtures: the reference facts in ``tests/fixtures/reference``, one-thread torch."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
