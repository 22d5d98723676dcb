"""Identity names become file and folder names: the one check every writer applies before writing.

Names come from files a user is handed (contexts, embeddings, folder listings), so a name such as
``../../x``, ``/etc/x`` or ``a/b`` must never reach ``open()``. :func:`check_name` accepts only a
single, visible path component; :func:`safe_child` also checks that the resolved path (after
symbolic links) stays inside the output folder.
"""
from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path


class UnsafeNameError(ValueError):
    """A name that would not stay a single file or folder inside its output folder."""


def _problem(name: object) -> str | None:
    """Why ``name`` cannot be a file name, or None when it can."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if "/" in name or "\\" in name:
        return "contains a path separator ('/' or '\\')"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with '.' (hidden and temporary files start so)"
    bad = sorted({c for c in name if unicodedata.category(c) == "Cc"})
    if bad:
        return f"contains the control character(s) {', '.join(repr(c) for c in bad)}"
    return None


def check_name(name: str, what: str = "identity name") -> str:
    """Return ``name`` when it is a safe single path component; else raise :class:`UnsafeNameError`.

    Refused: empty names, ``/`` or ``\\``, ``..``, a leading ``.``, NUL and other control characters.
    ``what`` names the argument in the message (e.g. ``identity name in contexts.npz``).
    """
    problem = _problem(name)
    if problem is not None:
        raise UnsafeNameError(f"{what} {name!r} {problem}; names must be single visible file names")
    return name


def check_names(names: Iterable[str], what: str = "identity name") -> None:
    """:func:`check_name` for every name (the first bad one raises)."""
    for name in names:
        check_name(name, what)


def safe_child(folder: str | os.PathLike, name: str, what: str = "identity name") -> Path:
    """``folder / name`` after :func:`check_name`, refused when it resolves (symbolic links followed) outside ``folder``."""
    check_name(name, what)
    folder = Path(folder)
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise UnsafeNameError(f"{what} {name!r}: {path} resolves to {path.resolve()}, outside the output folder {folder}")
    return path
