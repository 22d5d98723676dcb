"""utils.distributed.resolve_task: which share of a job this process does."""
from __future__ import annotations

import pytest

from utils.distributed import resolve_task


def test_explicit_then_torchrun_then_single(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_task() == (0, 1)
    assert resolve_task(1, 4) == (1, 4)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_task() == (2, 3)
    assert resolve_task(0, 2) == (0, 2)  # explicit values win over torchrun's


def test_bad_shares_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"export.shard_index must be in \[0, export.num_shards=4\), found 4"):
        resolve_task(4, 4, "export")
    with pytest.raises(ValueError, match="set both sampling.shard_index and sampling.num_shards"):
        resolve_task(1, None)
