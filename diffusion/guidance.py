"""Negative contexts for negative-condition guidance: which context each identity is pushed away from.

NegFaceDiff (Caldeira, Damer and Boutros, ICCV Workshops 2025, arXiv 2508.09661) samples identity
``c`` with ``eps = (1 + s) eps(x_t, c) - s eps(x_t, c_neg)`` (their w = 0.5 is our s), steering each
sample towards its own context and away from a negative one; :func:`diffusion.samplers.guided_eps`
combines this with classifier-free guidance on the empty context. The negative of each identity is

* ``close``: the most similar *other* context of the set by cosine (the paper's Close-Neg),
* ``far``: the least similar other context (Far-Neg),
* ``file``: given per identity name in a contexts/embeddings file (any format
  :func:`contexts.sources.load_contexts` reads).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from contexts.sources import load_contexts

log = logging.getLogger(__name__)

#: ``sampling.negative.mode`` values (null = no negative guidance).
NEGATIVE_MODES = ("close", "far", "file")


@dataclass(frozen=True)
class NegativeSettings:
    """``sampling.negative``: ``mode`` (None, ``close``, ``far``, ``file``), ``scale`` s, the ``file`` of ``file``."""

    mode: str | None = None
    scale: float = 0.5
    file: str | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in NEGATIVE_MODES:
            raise ValueError(f"sampling.negative.mode must be null or one of {NEGATIVE_MODES}, found {self.mode!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"sampling.negative.scale must be a finite number, found {self.scale!r}")
        if (self.mode == "file") != (self.file is not None):
            raise ValueError("sampling.negative.file must be set exactly when sampling.negative.mode=file, "
                             f"found mode={self.mode!r}, file={self.file!r}")

    @property
    def active(self) -> bool:
        """Whether sampling needs the negative branch (a mode and a non-zero scale)."""
        return self.mode is not None and self.scale != 0.0


def choose_negatives(embeddings: torch.Tensor, mode: str, rows: Sequence[int] | None = None,
                     chunk_size: int = 4096) -> torch.Tensor:
    """Index of the most (``close``) or least (``far``) cosine-similar other row for each of ``rows``.

    Computed ``chunk_size`` x ``chunk_size`` blocks at a time on the device of ``embeddings``, so
    300,000 x 512 contexts never build the N x N matrix. A row is never its own negative; ties go
    to the lowest index (as ``argmax``).

    Args:
        embeddings: (N, D) contexts, N >= 2 (normalised here).
        rows: the rows to choose for (default: all N).
    Returns:
        (len(rows),) int64 indices into ``embeddings``.
    """
    if mode not in ("close", "far"):
        raise ValueError(f"choose_negatives mode must be 'close' or 'far', found {mode!r}")
    n = len(embeddings)
    if n < 2:
        raise ValueError(f"negative contexts need at least 2 contexts in the set, found {n}")
    x = F.normalize(embeddings, dim=1)
    rows_t = torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    rows_t = rows_t.to(x.device)
    chosen = []
    for r0 in range(0, len(rows_t), chunk_size):
        query_rows = rows_t[r0 : r0 + chunk_size]
        query = x[query_rows]
        best_value = torch.full((len(query_rows),), -math.inf, dtype=x.dtype, device=x.device)
        best_index = torch.zeros(len(query_rows), dtype=torch.long, device=x.device)
        for c0 in range(0, n, chunk_size):
            score = query @ x[c0 : c0 + chunk_size].T  # (r, c)
            if mode == "far":
                score = score.neg_()  # the least similar is the most similar to the negation
            inside = (query_rows >= c0) & (query_rows < c0 + score.shape[1])  # a row meets itself in this block
            score[inside.nonzero().squeeze(1), query_rows[inside] - c0] = -math.inf
            value, index = score.max(dim=1)
            better = value > best_value  # strict: earlier columns win ties
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + c0, best_index)
        chosen.append(best_index)
    return torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long, device=x.device)


def negative_contexts(settings: NegativeSettings, names: Sequence[str], contexts: np.ndarray, rows: Sequence[int],
                      device: torch.device | str = "cpu") -> np.ndarray:
    """The negative context of each identity in ``rows`` of the set (``names``, ``contexts`` (N, D)).

    ``close``/``far`` choose among all N contexts (so every shard agrees); ``file`` reads the
    negatives by identity name. Returns (len(rows), D) float32.
    """
    if settings.mode == "file":
        path = Path(settings.file)
        given = load_contexts(path)
        if given.dim != contexts.shape[1]:
            raise ValueError(f"sampling.negative.file {path} holds {given.dim}-d contexts, "
                             f"expected {contexts.shape[1]}-d")
        index = {name: i for i, name in enumerate(given.names)}
        missing = [names[i] for i in rows if names[i] not in index]
        if missing:
            raise ValueError(f"sampling.negative.file {path} has no negative for {len(missing)} identities, "
                             f"e.g. {missing[:3]}; it needs one entry named as each identity")
        return given.embeddings[np.asarray([index[names[i]] for i in rows], dtype=np.int64)].astype(np.float32)
    chosen = choose_negatives(torch.from_numpy(np.asarray(contexts, dtype=np.float32)).to(device), settings.mode,
                              list(rows)).cpu().numpy()
    log.info("negative contexts (%s) chosen for %d identities among %d", settings.mode, len(rows), len(contexts))
    return np.asarray(contexts, dtype=np.float32)[chosen]
