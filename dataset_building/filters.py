"""Sample filters between alignment and the class folders (``filter_identities.py``; configs/filter_config.yaml).

Input: per-image embeddings with identity labels (the ``.npz`` of ``encode.py``, streamed a chunk of
identities at a time by :mod:`embedding.identity_chunks`, or arrays). Every filter is optional; they
run in this order and each records what it dropped and why (:mod:`dataset_building.filter_report`):

1. **Per image** (each identity on its own): x_i are its L2-normalised embeddings, mu its centre
   (the unit mean of *all* its images), c_i = <x_i, mu>. An image is dropped when
   c_i < ``min_centre_cosine`` (reason ``below_min_cosine``), or when it lies more than ``max_z``
   standard deviations below the identity's mean, (mean_c - c_i) > max_z * max(std_c, 1e-6)
   (reason ``z_score``), with mean_c and std_c (ddof 0) the mean and standard deviation of the c_i
   of all its images. The floor 1e-6 keeps identities of (near-)identical images whole. In an
   identity of n images no image lies more than sqrt(n - 1) standard deviations from the mean
   (Samuelson's inequality), so ``max_z`` >= sqrt(n - 1) drops nothing: 2.24 for 6 images, 7 for 50.
   Then, with ``images_per_identity`` K, each identity keeps K of its remaining images: the first K
   by index (``image_selection=index``) or the K closest to its centre (``centre``). The cut comes
   before the identity filters so that consistency and centres describe exactly the K images that
   go into the dataset (reason ``beyond_k``, counted, not listed).
2. **Per identity**, on its kept images: dropped with fewer than max(``min_images``, K) images
   (``too_few_images``; at least 2 when ``min_consistency`` is set), or when its consistency (mean
   genuine score) is below ``min_consistency`` (``low_consistency``). The consistency is computed in
   closed form from the sum s = sum_i x_i: mean_{i != j} <x_i, x_j> = (|s|^2 - sum_i |x_i|^2) / (n (n - 1)),
   i.e. (|s|^2 - n) / (n (n - 1)) for unit x_i.
3. **Across identities**: identities are visited in ``separability_order`` (``consistency``: most
   consistent first, ties in natural name order, so of two confusable identities the cleaner one
   stays; or ``name``: natural name order, the rule of the context filter) and an identity is dropped
   when the cosine of its centre (unit mean of its kept images) to the centre of an identity kept
   before it is >= ``max_centre_similarity`` (``similar_centre``; :func:`embedding.similarity.greedy_separable`,
   chunked over both sides).
4. **Cut to N** (``identities``): of the remaining identities, the first N in natural name order
   (``identity_selection=name``) or the N most consistent (``consistency``) are kept (``beyond_n``);
   fewer than N is an error. The paper cut 10,050 generated identities to 10,000 x 50.

Arithmetic: rows in float32 (L2-normalised unless every row of the chunk already has a squared norm
within 1e-6 of 1, as FR backends write them), sums and statistics in float64. Memory: one chunk of
identities at a time, plus per kept identity its centre (D float32), its kept image indices and its
consistency: 300,000 x 512 centres are 600 MB.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dataset_building.filter_report import FilterReport
from embedding.identity_chunks import IdentityChunk, chunks_from_arrays, chunks_from_npz
from embedding.similarity import greedy_separable
from utils.config import resolve_device
from utils.image_io import natural_key
from utils.settings import Choice, Number, SettingError, check_settings

log = logging.getLogger(__name__)

STD_FLOOR = 1e-6  # the per-image z rule never drops images of an identity whose centre cosines vary less


#: The filter's settings as start-up rules (``filter_identities.py`` and :meth:`FilterSettings.check`).
SETTINGS = (
    *(Number(f"filter.{key}", -1, 1, optional=True) for key in ("min_centre_cosine", "min_consistency",
                                                                  "max_centre_similarity")),
    Number("filter.max_z", 0, low_open=True, optional=True),
    Number("filter.min_images", 1, integer=True),
    Number("filter.identities", 1, 1e8, integer=True, optional=True),
    Number("filter.images_per_identity", 1, 1e6, integer=True, optional=True),
    Choice("filter.separability_order", ("consistency", "name")),
    Choice("filter.identity_selection", ("name", "consistency")),
    Choice("filter.image_selection", ("index", "centre")),
    Number("filter.identities_per_chunk", 1, 1e7, integer=True),
    Number("filter.chunk_size", 1, 1e6, integer=True),
    Choice("filter.screen", ("float32", "bfloat16")),
)


@dataclass(frozen=True)
class FilterSettings:
    """The filters' settings (each ``None`` turns its filter off); the module docstring gives the rules."""

    min_centre_cosine: float | None = None
    max_z: float | None = None
    min_images: int = 1
    min_consistency: float | None = None
    max_centre_similarity: float | None = None
    separability_order: str = "consistency"
    identities: int | None = None
    images_per_identity: int | None = None
    identity_selection: str = "name"
    image_selection: str = "index"

    def check(self) -> None:
        """Raise one line naming the first bad setting (``filter.<name>``), what was expected and found."""
        check_settings(OmegaConf.create({"filter": asdict(self)}), SETTINGS)
        if self.identities is not None and self.images_per_identity is None:
            raise SettingError("filter.identities=N needs filter.images_per_identity=K (exactly N x K; the paper: "
                               "10000 x 50)")

    @property
    def min_kept_images(self) -> int:
        """Fewest images an identity may keep: min_images, K, and 2 when the consistency filter is on."""
        return max(self.min_images, self.images_per_identity or 0, 2 if self.min_consistency is not None else 0)


@dataclass
class _Survivors:
    """Identities that passed filters 1-2, with what filters 3-4 and the report need."""

    names: list[str]
    images: list[int]
    kept: list[np.ndarray]
    consistency: list[float]
    centres: list[np.ndarray]  # (I_chunk, D) float32 blocks of unit centres


def consistency_from_sums(s: np.ndarray, sq: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine within each identity, (|s|^2 - sum |x_i|^2) / (n (n - 1)); NaN where n < 2.

    Args:
        s: (I, D) sums of the unit embeddings; sq: (I,) sums of their squared norms; n: (I,) image counts.
    """
    n = n.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= 2, ((s * s).sum(axis=1) - sq) / (n * (n - 1)), np.nan)


def _screen_chunk(chunk: IdentityChunk, s: FilterSettings, survivors: _Survivors, dropped_images: list[list[Any]],
                  dropped_identities: list[list[Any]], counts: Counter) -> None:
    """Filters 1-2 on one chunk of identities; appends what passes to ``survivors``, the rest to the lists."""
    n_per_id = np.asarray(chunk.counts, dtype=np.int64)  # (I,)
    if (n_per_id < 1).any():
        raise ValueError(f"identity {chunk.identities[int(np.argmin(n_per_id))]!r} has no images")
    n_ids, n = len(n_per_id), int(n_per_id.sum())
    seg = np.repeat(np.arange(n_ids), n_per_id)  # (n,) identity of each row
    local = np.arange(n) - (np.cumsum(n_per_id) - n_per_id)[seg]  # (n,) index within the identity
    x = np.asarray(chunk.embeddings, dtype=np.float32)  # (n, D)
    sq = np.einsum("nd,nd->n", x, x)
    if (sq == 0).any():
        r = int(np.flatnonzero(sq == 0)[0])
        raise ValueError(f"identity {chunk.identities[seg[r]]!r}: image {chunk.images[r]!r} has an all-zero embedding")
    if np.abs(sq - 1).max() > 1e-6:  # FR backends write unit rows already
        x = x / np.sqrt(sq)[:, None]
        sq = np.einsum("nd,nd->n", x, x)
    membership = scipy.sparse.csr_matrix((np.ones(n), (seg, np.arange(n))), shape=(n_ids, n))  # (I, n)
    total = membership @ x.astype(np.float64)  # (I, D) sum of all images
    mu = (total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    cos = np.einsum("nd,nd->n", x, mu[seg]).astype(np.float64)  # (n,) c_i = <x_i, mu>
    mean = np.bincount(seg, cos, n_ids) / n_per_id
    std = np.sqrt(np.bincount(seg, (cos - mean[seg]) ** 2, n_ids) / n_per_id)
    z = (cos - mean[seg]) / np.maximum(std[seg], STD_FLOOR)
    below = cos < s.min_centre_cosine if s.min_centre_cosine is not None else np.zeros(n, bool)
    outlier = ~below & (z < -s.max_z) if s.max_z is not None else np.zeros(n, bool)
    for r in np.flatnonzero(below | outlier):
        reason = "below_min_cosine" if below[r] else "z_score"
        counts[reason] += 1
        dropped_images.append([chunk.identities[seg[r]], int(local[r]), chunk.images[r], reason,
                               round(float(cos[r]), 6), round(float(z[r]), 4)])
    chosen = np.flatnonzero(~(below | outlier))
    if s.images_per_identity is not None:
        key = local[chosen] if s.image_selection == "index" else -cos[chosen]
        ranked = chosen[np.lexsort((local[chosen], key, seg[chosen]))]  # by identity, then key, then index
        rank = np.arange(len(ranked)) - np.searchsorted(seg[ranked], seg[ranked])  # position within the identity
        counts["beyond_k"] += int((rank >= s.images_per_identity).sum())
        chosen = np.sort(ranked[rank < s.images_per_identity])
    kept_n = np.bincount(seg[chosen], minlength=n_ids)
    left_out = np.setdiff1d(np.arange(n), chosen)
    kept_sum = total.copy()  # (I, D) sum of the kept images: all minus the few left out
    np.subtract.at(kept_sum, seg[left_out], x[left_out].astype(np.float64))
    kept_sq = np.bincount(seg[chosen], sq[chosen].astype(np.float64), n_ids)
    consistency = consistency_from_sums(kept_sum, kept_sq, kept_n)
    too_few = kept_n < s.min_kept_images
    low = ~too_few & (consistency < s.min_consistency) if s.min_consistency is not None else np.zeros(n_ids, bool)
    for i in np.flatnonzero(too_few | low):
        reason, value = ("too_few_images", int(kept_n[i])) if too_few[i] else ("low_consistency", round(float(consistency[i]), 6))
        counts[reason] += 1
        dropped_identities.append([chunk.identities[i], "identity", reason, value, None])
    passed = np.flatnonzero(~(too_few | low))
    kept_local = np.split(local[chosen], np.cumsum(kept_n)[:-1])
    survivors.names += [chunk.identities[i] for i in passed]
    survivors.images += n_per_id[passed].tolist()
    survivors.kept += [kept_local[i] for i in passed]
    survivors.consistency += consistency[passed].tolist()
    centres = kept_sum[passed]
    survivors.centres.append((centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)).astype(np.float32))


def run_filters(
    chunks: Iterable[IdentityChunk],
    settings: FilterSettings,
    source: dict[str, Any] | None = None,
    chunk_size: int = 2048,
    screen: str = "float32",
    device: str | torch.device = "cpu",
) -> FilterReport:
    """Apply filters 1-4 (module docstring) to a stream of identity chunks and return the report.

    Args:
        chunks: identity chunks (:func:`embedding.identity_chunks.chunks_from_npz` or ``chunks_from_arrays``);
            an identity must not appear in two chunks.
        settings: the filter settings (checked first).
        source: what the report records about the input (path, sizes); counted from the chunks when None.
        chunk_size, screen, device: how the separability filter computes
            (:func:`embedding.similarity.greedy_separable`; the result does not depend on them).
    Returns:
        :class:`dataset_building.filter_report.FilterReport`.
    """
    settings.check()
    survivors = _Survivors([], [], [], [], [])
    dropped_images: list[list[Any]] = []
    dropped_identities: list[list[Any]] = []
    counts: Counter = Counter()
    n_images = n_identities = dim = 0
    for chunk in chunks:
        _screen_chunk(chunk, settings, survivors, dropped_images, dropped_identities, counts)
        n_images += int(np.sum(chunk.counts))
        n_identities += len(chunk.identities)
        dim = int(chunk.embeddings.shape[1])
    if len(set(survivors.names)) != len(survivors.names):
        twice = [name for name, k in Counter(survivors.names).items() if k > 1][:3]
        raise ValueError(f"identities {twice} appear under several labels; every identity must have one label")
    names = survivors.names
    consistency = np.asarray(survivors.consistency, dtype=np.float64)
    by_name = np.asarray(sorted(range(len(names)), key=lambda i: natural_key(names[i])), dtype=np.int64)
    name_rank = np.empty(len(names), dtype=np.int64)
    name_rank[by_name] = np.arange(len(names))
    by_consistency = np.lexsort((name_rank, -np.nan_to_num(consistency, nan=-np.inf)))
    alive = np.ones(len(names), dtype=bool)
    if settings.max_centre_similarity is not None and names:
        order = by_consistency if settings.separability_order == "consistency" else by_name
        centres = np.concatenate(survivors.centres)
        greedy = greedy_separable(centres, settings.max_centre_similarity, order, chunk_size=chunk_size,
                                  screen=screen, device=device)
        alive[greedy.dropped] = False
        counts["similar_centre"] = len(greedy.dropped)
        dropped_identities += [[names[i], "separability", "similar_centre", round(float(v), 6), names[j]]
                               for i, j, v in zip(greedy.dropped, greedy.nearest, greedy.similarity)]
    remaining = [i for i in (by_name if settings.identity_selection == "name" else by_consistency) if alive[i]]
    if settings.identities is not None:
        if len(remaining) < settings.identities:
            dropped = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "beyond_k")
            raise ValueError(f"only {len(remaining)} of {n_identities} identities pass the filters ({dropped or 'none dropped'}), "
                             f"fewer than filter.identities={settings.identities}; generate more identities or loosen the filters")
        for i in remaining[settings.identities:]:
            dropped_identities.append([names[i], "cut", "beyond_n", None, None])
        counts["beyond_n"] = len(remaining) - settings.identities
        remaining = remaining[: settings.identities]
    final = sorted(remaining, key=lambda i: name_rank[i])
    identities = {names[i]: {"images": survivors.images[i], "kept": survivors.kept[i].tolist(),
                             "consistency": round(float(consistency[i]), 6) if np.isfinite(consistency[i]) else None}
                  for i in final}
    report_counts = {
        "input": {"identities": n_identities, "images": n_images},
        "image_filter": {k: counts[k] for k in ("below_min_cosine", "z_score")},
        "image_cut": {"beyond_k": counts["beyond_k"]},
        "identity_filter": {k: counts[k] for k in ("too_few_images", "low_consistency")},
        "separability": {"similar_centre": counts["similar_centre"]},
        "identity_cut": {"beyond_n": counts["beyond_n"]},
        "kept": {"identities": len(identities), "images": sum(len(e["kept"]) for e in identities.values())},
    }
    source = source or {"embeddings": None, "n_images": n_images, "n_identities": n_identities, "dim": dim}
    return FilterReport(asdict(settings), source, report_counts, identities, dropped_images, dropped_identities)


SETTING_KEYS = tuple(FilterSettings.__dataclass_fields__)


def settings_from_config(c: DictConfig) -> FilterSettings:
    """:class:`FilterSettings` from the ``filter`` block of configs/filter_config.yaml."""
    return FilterSettings(**{key: c[key] for key in SETTING_KEYS})


def filter_from_config(cfg: DictConfig) -> Path:
    """``filter_identities.py``: filter ``cfg.filter.embeddings`` and write the report ``cfg.filter.report``.

    An existing report with the same settings and input is kept (nothing to do); one with other
    settings is an error (delete it or write elsewhere).
    """
    check_settings(cfg, SETTINGS)
    c = cfg.filter
    settings = settings_from_config(c)
    settings.check()
    path = Path(str(c.report))
    embeddings = str(Path(str(c.embeddings)).resolve())
    if path.is_file():
        old = FilterReport.load(path)
        if old.settings == asdict(settings) and old.source.get("embeddings") == embeddings:
            log.info("%s exists with these settings and input; nothing to do (delete it to filter again)", path)
            return path
        raise ValueError(f"filter.report={path} exists with other settings or input; delete it or set another filter.report")
    info, chunks = chunks_from_npz(c.embeddings, int(c.identities_per_chunk))
    n_chunks = math.ceil(info["n_identities"] / int(c.identities_per_chunk))
    report = run_filters(tqdm(chunks, total=n_chunks, desc="filtering", unit="chunk"), settings,
                         {"embeddings": embeddings, **info}, chunk_size=int(c.chunk_size), screen=str(c.screen),
                         device=resolve_device(cfg.device))
    report.save(path)
    log.info("wrote %s: %s", path, report.counts)
    return path


def filter_arrays(embeddings: np.ndarray, labels: np.ndarray, settings: FilterSettings,
                  names: list[str] | None = None, report: str | os.PathLike | None = None) -> FilterReport:
    """Library form: filter in-memory embeddings (N, D) with labels (N,) (and ``<identity>/<image>`` names)."""
    result = run_filters(chunks_from_arrays(embeddings, labels, names), settings)
    if report is not None:
        result.save(report)
    return result
