"""Atomic files and folders: write under a temporary name in the same folder, then rename.

A reader (or a resumed job) never sees half a file: a path with its final name is complete, and a
killed writer leaves at most a hidden temporary (``.<name>.<random>.tmp``) that the next run removes
or ignores. ``tempfile`` creates temporaries with mode 0600; the final file gets the mode a plain
``open()`` would have given it (0666 minus the process umask, 0777 minus it for folders), so files
written into a shared cluster folder stay readable by the group.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary left by :func:`atomic_file` / :func:`atomic_folder` (``.<name>.<random>.tmp``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def temporary_beside(final: str | os.PathLike) -> Path:
    """Create an empty ``.<final name>.<random>.tmp`` beside ``final`` with the mode ``open()`` would give.

    For writers that fill several files and rename them together in a chosen order (the data file
    last); :func:`atomic_file` is the one-file case.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary beside ``path`` for writing; on success flush, fsync and rename it to ``path``.

    On any exception the temporary is removed and ``path`` is left as it was.
    """
    tmp = temporary_beside(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary file)`` inside :func:`atomic_file`; returns ``path``."""
    with atomic_file(path, "wb") as f:
        write(f)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


@contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on success rename it to ``path``.

    ``replace``: an existing ``path`` is removed first (otherwise it is an error). On any exception
    the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            if not replace:
                raise FileExistsError(f"{path} already exists; remove it or write elsewhere")
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temporaries(folder: str | os.PathLike, belongs: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete the temporaries an interrupted writer left in ``folder`` (not recursive).

    ``belongs(final_name)`` limits the clean-up to temporaries of the given final names (e.g. this
    shard's identities), so concurrent writers of other names are left alone. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if not is_temporary(entry):
            continue
        final = entry.name[1:-len(".tmp")].rpartition(".")[0]
        if belongs is not None and not belongs(final):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
