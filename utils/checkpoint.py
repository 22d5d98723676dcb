"""Safe, strict loading and atomic saving of state dicts.

Every published file this project reads (IDiff-Face ``*.ckpt``, the two VQ-f4 halves,
ElasticFace ``*.pth``) is a plain ``torch.save`` of a state dict, so everything is read
with ``torch.load(..., weights_only=True)``: a file that hides a pickled object is refused
instead of executed.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.atomic import write_atomic, write_files_together


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def torch_load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu", source_hint: str = "") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-line errors that name the file.

    Args:
        path: file written by ``torch.save``.
        map_location: device the tensors land on.
        source_hint: where the file comes from, added to the "missing file" message.
    """
    path = Path(path)
    if not path.is_file():
        hint = f"; {source_hint}" if source_hint else ""
        raise CheckpointError(f"checkpoint file {path} does not exist{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # garbage bytes read as an unknown pickle opcode
            raise CheckpointError(
                f"{path} is not a readable torch checkpoint (corrupt or truncated?): {_short_reason(err)}"
            ) from None
        raise CheckpointError(
            f"{path} contains a pickled object that is not plain tensors/containers and was refused "
            f"(weights_only loading): {_short_reason(err)}"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ... on damaged files
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (corrupt or truncated?): {_short_reason(err)}"
        ) from None


def _short_reason(err: Exception) -> str:
    """One line out of torch's multi-line load errors (the 'Unsupported global' line when present)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "unsupported global" in line.lower():
            return line[:200]
    reason = lines[0].split(". ")[0] if lines else ""
    return f"{type(err).__name__}: {reason[:200]}" if reason else type(err).__name__


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str] = ("module.",)) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix (e.g. ``module.`` of DDP) when *every* key carries it."""
    out = dict(state_dict)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def load_state_dict_file(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    source_hint: str = "",
    strip_prefixes: Iterable[str] = ("module.",),
) -> dict[str, torch.Tensor]:
    """Read a file that must hold a flat ``{name: tensor}`` state dict."""
    obj = torch_load(path, map_location=map_location, source_hint=source_hint)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # Lightning-style wrapper
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    return strip_prefix(obj, strip_prefixes)


def check_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise a :class:`CheckpointError` listing missing/unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        def fmt(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys [{fmt(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{fmt(unexpected)}]")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches [{fmt(mismatched)}]")
        raise CheckpointError(f"{path} does not fit {type(module).__name__}: " + "; ".join(parts))


def load_checkpoint(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    source_hint: str = "",
    strip_prefixes: Iterable[str] = ("module.",),
) -> nn.Module:
    """Load a state-dict file into ``module`` strictly (``strict=True`` after a readable key/shape check)."""
    state_dict = load_state_dict_file(path, map_location=map_location, source_hint=source_hint, strip_prefixes=strip_prefixes)
    check_state_dict(module, state_dict, path)
    module.load_state_dict(state_dict, strict=True)
    return module


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: no partial file ever has ``path``'s name."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def save_together(folder: str | os.PathLike, objects: Mapping[str, Any], last: str | None = None) -> None:
    """``torch.save`` ``{file name: object}`` into ``folder`` as one unit (:func:`utils.atomic.write_files_together`)."""
    write_files_together(folder, {name: (lambda f, obj=obj: torch.save(obj, f)) for name, obj in objects.items()}, last)
