"""Atomic files and folders: write under a temporary name in the same folder, then rename.

A reader (or a resumed job) never sees half a file: a path with its final name is complete, and a
killed writer leaves at most a hidden temporary (``.<name>.<random>.tmp``) that the next run removes
or ignores. :func:`write_files_together` extends this to several files that must change together
(the checkpoint files of one training step or epoch). ``tempfile`` creates temporaries with mode
0600; the final file gets the mode a plain ``open()`` would have given it (0666 minus the process
umask, 0777 minus it for folders), so files written into a shared cluster folder stay readable by
the group.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

#: the committed, not yet moved-in files of :func:`write_files_together`
PENDING_DIR = ".pending"


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


def write_files_together(
    folder: str | os.PathLike, files: Mapping[str, Callable[[IO[bytes]], Any]], last: str | None = None
) -> None:
    """Write ``{name: write(binary file)}`` into ``folder`` as one unit: after a kill at any point, either all
    the old files or all the new ones are the committed state.

    1. every file is written into a temporary folder ``folder/..pending.<random>.tmp/``: a kill leaves
       the old files and a temporary;
    2. that folder is renamed to ``folder/.pending/``: the commit;
    3. the files are moved into ``folder`` (``last`` last) and ``.pending/`` is removed: a kill leaves
       some new files in place and the rest in ``.pending/``, which :func:`committed_path` reads and
       :func:`finish_files_together` (called first here, and by the writer when it restarts) moves in.

    Only one process may write ``folder`` this way at a time.
    """
    folder = Path(folder)
    finish_files_together(folder, last)
    with atomic_folder(folder / PENDING_DIR) as staging:
        for name, write in files.items():
            write_atomic(staging / name, write)
    _move_pending(folder, last)


def _move_pending(folder: Path, last: str | None) -> None:
    pending = folder / PENDING_DIR
    names = sorted((p.name for p in pending.iterdir() if not is_temporary(p)), key=lambda name: (name == last, name))
    for name in names:
        os.replace(pending / name, folder / name)
    os.rmdir(pending)


def finish_files_together(folder: str | os.PathLike, last: str | None = None) -> bool:
    """Complete a :func:`write_files_together` killed after its commit and remove the temporaries of ``folder``.

    Only the process that writes ``folder`` may call this. Returns whether an interrupted write was completed.
    """
    folder = Path(folder)
    remove_temporaries(folder)
    if not (folder / PENDING_DIR).is_dir():
        return False
    _move_pending(folder, last)
    return True


def committed_path(folder: str | os.PathLike, name: str) -> Path:
    """Where the committed ``name`` of ``folder`` is: ``.pending/`` while a killed write is unfinished, else ``folder``."""
    pending = Path(folder) / PENDING_DIR / name
    return pending if pending.is_file() else Path(folder) / name
