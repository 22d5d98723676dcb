"""utils.atomic: final files get the umask's mode (not mkstemp's 0600); several files change together or not at all."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from utils.atomic import (
    atomic_folder,
    committed_path,
    finish_files_together,
    write_files_together,
    write_text_atomic,
)


@pytest.fixture
def umask_027() -> Iterator[None]:
    """A shared-cluster umask: group may read, others nothing."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("umask_027")
def test_files_and_folders_get_the_mode_open_would_give(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "report.json", "{}\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o640
    with atomic_folder(tmp_path / "identity") as folder:
        (folder / "0.png").write_bytes(b"x")
    plain_dir = tmp_path / "plain_dir"
    plain_dir.mkdir()
    assert stat.S_IMODE((tmp_path / "identity").stat().st_mode) == stat.S_IMODE(plain_dir.stat().st_mode) == 0o750


def _write(text: str):
    return lambda f: f.write(text.encode())


def _state(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: committed_path(folder, name).read_text() for name in names if committed_path(folder, name).is_file()}


def test_files_written_together_survive_a_kill_at_every_boundary(tmp_path: Path, kill_switch) -> None:
    names = ["a.pt", "b.pt", "state.pt"]
    run = tmp_path / "run"
    write_files_together(run, {name: _write(f"old {name}") for name in names}, last="state.pt")
    old = {name: f"old {name}" for name in names}
    new = {name: f"new {name}" for name in names}
    counter = kill_switch(tmp_path / "count", tmp_path / "count", tmp_path / "unused")
    write_files_together(tmp_path / "count", {name: _write(f"new {name}") for name in names}, last="state.pt")
    seen = []
    for n in range(1, len(counter.events) + 1):
        snapshot = tmp_path / f"killed_{n}"
        switch = kill_switch(run, tmp_path / "run", snapshot, kill_at=n)
        with pytest.raises(switch.killed):
            write_files_together(run, {name: _write(f"new {name}") for name in names}, last="state.pt")
        state = _state(snapshot, names)
        assert state in (old, new), (n, switch.events[-1], state)
        seen.append(state == new)
        kill_switch(tmp_path / "none", tmp_path, tmp_path / "unused")
        finish_files_together(snapshot, last="state.pt")
        assert sorted(p.name for p in snapshot.iterdir()) == names and _state(snapshot, names) == state
    assert seen == sorted(seen) and seen[0] is False and seen[-1] is True, seen  # never back to old once committed
