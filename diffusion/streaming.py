"""Where ``sample.py`` puts each finished identity: blocks / image files, or aligned faces streamed into shards.

The sampling loop (:func:`diffusion.generation.generate_into`) hands every identity to a sink as
soon as all its images exist, in the order of the sink's :meth:`pending` list:

* :class:`BlockWriter` (``sampling.output=block|files``): the samples as they come, one atomic
  ``<id>.grid<r>x<c>.png`` or ``<id>/<k>.png`` folder per identity; process ``index`` of ``count``
  owns identities ``i % count == index`` (the next steps are ``align.py`` and ``export_dataset.py``
  or ``split_identity_blocks.py``).
* :class:`ShardStream` (``sampling.output=rec|webdataset|folders``): each identity is aligned at
  once, on the sampling device (MTCNN batched over the identity's images, ``sampling.align`` =
  ``align.py``'s settings), and pushed into a :class:`dataset_building.shards.ShardSetWriter`, with
  no PNG blocks in between. The identities of the contexts file are labelled in natural name order
  (``export_dataset.py``'s order) and shard files follow :class:`dataset_building.shards.ShardPlan`:
  a process owns whole shard files. A finished shard is never rewritten; a killed one is redone
  (every image has its own seed, and each identity is aligned on its own, so its bytes do not
  depend on what else was in flight). The process that finds every shard written writes
  ``alignment_report.json`` (``align.py``'s layout) and runs :func:`dataset_building.merge.finalize`.

Alignment counts are kept per shard file in ``shard-<s>.alignment.json`` beside the shard files,
written before the push that finishes the shard (``rec``/``webdataset``) or the identity
(``folders``), so a finished unit always has its counts.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig

from alignment.aligner import TEMPLATES, FaceAligner
from dataset_building.card import write_dataset_card
from dataset_building.export import card_contents
from dataset_building.merge import finalize, missing_shards
from dataset_building.shards import FORMATS, IMAGE_FORMATS, ShardPlan, ShardSetWriter, shard_name
from utils.atomic import remove_temporaries, write_json_atomic
from utils.image_io import block_name, natural_key, write_block, write_image_folder
from utils.settings import is_finite, is_int, require

log = logging.getLogger(__name__)

SAMPLE_OUTPUTS = ("block", "files")
ALIGNED_OUTPUTS = FORMATS  # rec, webdataset, folders
ALIGNMENT_REPORT = "alignment_report.json"


@dataclass(frozen=True)
class AlignSettings:
    """``sampling.align``: ``align.py``'s settings for in-process alignment (see ``configs/align_config.yaml``).

    ``batch_size`` is the MTCNN batch within one identity (CPU kernels may round differently for
    another batch size, so it is part of the fingerprint, like ``micro_batch``).
    """

    template: str = "arcface"
    size: int = 112
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    pad: float = 0.0
    just_resize_if_fail: bool = True
    batch_size: int = 64

    def __post_init__(self) -> None:
        require(self.template in TEMPLATES, "sampling.align.template", f"one of {sorted(TEMPLATES)}", self.template)
        require(is_int(self.size) and 16 <= self.size <= 4096, "sampling.align.size", "an integer in [16, 4096]", self.size)
        require(is_int(self.min_face_size) and self.min_face_size >= 1, "sampling.align.min_face_size", "an integer >= 1",
               self.min_face_size)
        require(isinstance(self.thresholds, tuple) and len(self.thresholds) == 3
               and all(is_finite(t) and 0 < t <= 1 for t in self.thresholds),
               "sampling.align.thresholds", "3 scores in (0, 1] (P-Net, R-Net, O-Net)", self.thresholds)
        require(is_finite(self.pad) and 0 <= self.pad <= 1, "sampling.align.pad", "a fraction in [0, 1]", self.pad)
        require(isinstance(self.just_resize_if_fail, bool), "sampling.align.just_resize_if_fail", "true or false",
               self.just_resize_if_fail)
        require(is_int(self.batch_size) and self.batch_size >= 1, "sampling.align.batch_size", "an integer >= 1",
               self.batch_size)

    @classmethod
    def from_config(cls, align: DictConfig) -> AlignSettings:
        """Read ``sampling.align`` (every key must be present)."""
        thresholds = tuple(align.thresholds) if isinstance(align.thresholds, ListConfig) else align.thresholds
        return cls(align.template, align.size, align.min_face_size, thresholds, align.pad, align.just_resize_if_fail,
                   align.batch_size)

    def build_aligner(self, device: torch.device) -> FaceAligner:
        """MTCNN on ``device`` (the sampling device) with these settings."""
        return FaceAligner(device=device, min_face_size=self.min_face_size, thresholds=self.thresholds,
                           batch_size=self.batch_size, pad=self.pad)


@dataclass(frozen=True)
class ShardSettings:
    """``sampling.output`` (``rec``, ``webdataset``, ``folders``) and ``sampling.shards`` (``export.*`` keys)."""

    format: str
    identities_per_shard: int = 1000
    image_format: str = "jpg"
    jpeg_quality: int = 95
    shuffle_seed: int | None = 0
    header: bool = True
    keep_shards: bool = False

    def __post_init__(self) -> None:
        require(self.format in FORMATS, "sampling.output", f"one of {SAMPLE_OUTPUTS + FORMATS}", self.format)
        require(is_int(self.identities_per_shard) and self.identities_per_shard >= 1, "sampling.shards.identities_per_shard",
               "an integer >= 1", self.identities_per_shard)
        require(self.image_format in IMAGE_FORMATS, "sampling.shards.image_format", f"one of {tuple(IMAGE_FORMATS)}",
               self.image_format)
        require(is_int(self.jpeg_quality) and 1 <= self.jpeg_quality <= 95, "sampling.shards.jpeg_quality",
               "an integer in [1, 95]", self.jpeg_quality)
        require(self.shuffle_seed is None or is_int(self.shuffle_seed), "sampling.shards.rec.shuffle_seed",
               "null or an integer", self.shuffle_seed)
        require(isinstance(self.header, bool), "sampling.shards.rec.header", "true or false", self.header)
        require(isinstance(self.keep_shards, bool), "sampling.shards.rec.keep_shards", "true or false", self.keep_shards)

    @classmethod
    def from_config(cls, sampling: DictConfig) -> ShardSettings:
        """Read ``sampling.output`` and ``sampling.shards`` (every key must be present)."""
        s = sampling.shards
        return cls(sampling.output, s.identities_per_shard, s.image_format, s.jpeg_quality, s.rec.shuffle_seed,
                   s.rec.header, s.rec.keep_shards)

    def fingerprint(self) -> dict[str, Any]:
        """What shapes the files (``keep_shards`` does not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("format", "keep_shards")}


class Aligner(Protocol):
    """What :class:`ShardStream` needs of an aligner (:class:`alignment.aligner.FaceAligner`)."""

    def align(self, images: Sequence[np.ndarray], template: str = ..., size: int | None = ...) -> list:
        """N (H, W, 3) uint8 images -> N (size, size, 3) uint8 crops or None where no face was found."""


def align_identity(aligner: Aligner, images: np.ndarray, settings: AlignSettings) -> tuple[list[np.ndarray], dict]:
    """Align the images (N, H, W, 3) uint8 of one identity as ``align.py`` does.

    Returns:
        The kept (size, size, 3) crops in image order (a tile without a face resized with
        ``cv2.INTER_AREA`` or left out, as ``just_resize_if_fail`` says) and the counts
        ``{"detected", "resized", "dropped"}``.
    """
    side = settings.size
    crops = aligner.align(list(images), template=settings.template, size=side)
    kept: list[np.ndarray] = []
    counts = {"detected": 0, "resized": 0, "dropped": 0}
    for image, crop in zip(images, crops, strict=True):
        outcome = "detected" if crop is not None else "resized" if settings.just_resize_if_fail else "dropped"
        counts[outcome] += 1
        if outcome != "dropped":
            kept.append(crop if crop is not None else cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA))
    return kept, counts


class BlockWriter:
    """``sampling.output=block|files``: this process's identities ``i % count == index``, each written atomically.

    An identity is done when its final block file or folder exists; temporaries a killed run of
    this process left are removed first.
    """

    def __init__(self, out_dir: str | os.PathLike, names: Sequence[str], n_images: int, output: str = "block",
                 task: tuple[int, int] = (0, 1)) -> None:
        require(output in SAMPLE_OUTPUTS, "sampling.output", f"one of {SAMPLE_OUTPUTS} (aligned outputs {FORMATS} are written "
               "by ShardStream)", output)
        self.out_dir, self.output, self.task = Path(out_dir), output, task
        index, count = task
        self.mine = [names[i] for i in range(index, len(names), count)]
        finals = {name: block_name(name, n_images) if output == "block" else name for name in self.mine}
        final_names = set(finals.values())
        for path in remove_temporaries(self.out_dir, lambda final: final in final_names):
            log.info("removed %s left by an interrupted run", path.name)
        self._pending = [name for name in self.mine if not (self.out_dir / finals[name]).exists()]

    def pending(self) -> list[str]:
        """This process's identities still to write, in the order :meth:`add` expects them."""
        return self._pending

    def add(self, identity: str, images: np.ndarray) -> None:
        """Write the samples (N, H, W, 3) uint8 of ``identity``."""
        if self.output == "block":
            write_block(self.out_dir, identity, images)
        else:
            write_image_folder(self.out_dir, identity, images)

    def finish(self) -> None:
        """Nothing to finish: every identity is complete when written."""

    def close(self) -> None:
        """Nothing to drop: an identity is written whole or not at all."""


class ShardStream:
    """``sampling.output=rec|webdataset|folders``: align each identity in-process and push it into shard files.

    Args:
        out_dir: the dataset folder (``dataset_building.shards`` layout, plus ``alignment_report.json``).
        names: every identity of the run; labels follow their natural name order.
        task: (index, count): this process writes the shard files ``s % count == index``.
        aligner: the MTCNN aligner (:meth:`AlignSettings.build_aligner`) or any object with its ``align``.
    """

    def __init__(self, out_dir: str | os.PathLike, names: Sequence[str], task: tuple[int, int],
                 shards: ShardSettings, align: AlignSettings, aligner: Aligner) -> None:
        self.out_dir, self.shards, self.align, self.aligner = Path(out_dir), shards, align, aligner
        self.task = task
        self.plan = ShardPlan(tuple(sorted(names, key=natural_key)), shards.identities_per_shard, task)
        self.writer = ShardSetWriter(out_dir, self.plan, shards.format, shards.image_format, shards.jpeg_quality,
                                     align.size)
        self.label = {name: label for label, name in enumerate(self.plan.names)}
        pieces = {self._piece_path(s).name for s in self.plan.my_files()}
        remove_temporaries(self.writer.folder, lambda final: final in pieces)
        self.mine = [self.plan.names[label] for s in self.plan.my_files() for label in self.plan.labels(s)]
        self._counts: dict[int, dict[str, dict[str, int]]] = {}

    def _piece_path(self, s: int) -> Path:
        return self.writer.folder / f"{shard_name(s)}.alignment.json"

    def _read_piece(self, s: int) -> dict[str, dict[str, int]]:
        path = self._piece_path(s)
        return json.loads(path.read_text()) if path.is_file() else {}

    def pending(self) -> list[str]:
        """Identities still to push, in plan order (whole unfinished shard files of this process)."""
        return [name for _, name in self.writer.pending()]

    def add(self, identity: str, images: np.ndarray) -> None:
        """Align the samples (N, H, W, 3) uint8 of the next pending identity and push the crops."""
        kept, counts = align_identity(self.aligner, images, self.align)
        if not kept:
            raise ValueError(f"identity {identity!r}: no face found in any of its {len(images)} images and "
                             "sampling.align.just_resize_if_fail=false; a shard plan gives every identity a label, "
                             "so it cannot be left out: set sampling.align.just_resize_if_fail=true, or use "
                             "sampling.output=block and align.py (which leaves such identities out)")
        label = self.label[identity]
        s = label // self.plan.identities_per_shard
        if s not in self._counts:
            self._counts = {s: self._read_piece(s)}
        self._counts[s][identity] = counts
        if self.shards.format == "folders" or label == self.plan.labels(s)[-1]:
            order = [self.plan.names[j] for j in self.plan.labels(s)]
            piece = {name: self._counts[s][name] for name in order if name in self._counts[s]}
            write_json_atomic(self._piece_path(s), piece, indent=1)
        self.writer.add(identity, np.stack(kept))

    def finish(self) -> dict | None:
        """Once every shard file of every process exists: ``alignment_report.json``, then merge and summary.

        Returns:
            The export summary (:func:`dataset_building.merge.finalize`), or None while shards are missing.
        """
        report_path = self.out_dir / ALIGNMENT_REPORT
        if not report_path.is_file():
            missing = missing_shards(self.out_dir, self.plan, self.shards.format)
            if missing:
                log.info("%d of %d shard files are not written yet (first: %s); the last process to finish merges",
                         len(missing), self.plan.num_files, shard_name(missing[0]))
                return None
            write_json_atomic(report_path, self._report(), indent=1)
        summary = finalize(self.out_dir, self.plan, self.shards.format, self.shards.image_format, self.align.size,
                           self.shards.shuffle_seed, self.shards.header, self.shards.keep_shards)
        write_dataset_card(self.out_dir, self.out_dir, {"tool": "sample.py", "settings": {
            "align": asdict(self.align), "shards": self.shards.fingerprint()}}, card_contents(self.out_dir))
        return summary

    def _report(self) -> dict:
        """The counts of every shard file, in label order, in ``align.py``'s report layout."""
        identities: dict[str, dict[str, int]] = {}
        for s in range(self.plan.num_files):
            piece = self._read_piece(s)
            for label in self.plan.labels(s):
                name = self.plan.names[label]
                if name not in piece:
                    raise ValueError(f"{self._piece_path(s)} has no alignment counts of identity {name!r}; "
                                     "was the shard written by another program?")
                identities[name] = piece[name]
        totals = {k: sum(c[k] for c in identities.values()) for k in ("detected", "resized", "dropped")}
        # align.py's layout; sampling reads no image files, so none is unreadable
        return {"identities": identities, "totals": {**totals, "identities": len(identities), "unreadable": 0},
                "unreadable": {}, "just_resize_if_fail": self.align.just_resize_if_fail,
                "settings": asdict(self.align), "streamed": True}  # aligned in sample.py: the samples are this folder's

    def close(self) -> None:
        """Drop a partly written shard file (finished ones stay)."""
        self.writer.close()
