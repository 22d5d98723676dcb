"""Align sampled identities (``align.py``): every tile of every identity block or folder to a 112x112 crop.

:func:`align_identities` detects the central face of each tile with MTCNN, batched
  over tiles of several identities, and warp it onto the 112x112 ArcFace template. A tile without a
  face is resized (``just_resize_if_fail=True``, what the original meant to do) or dropped. A JSON
  report counts detected / resized / dropped tiles per identity, lists the unreadable files (which are
  skipped) and records the input folder and the settings (the link the dataset card follows back to
  the samples). Identities whose output already exists are skipped, and every identity is written
  atomically.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from alignment.aligner import FaceAligner
from utils.atomic import write_json_atomic
from utils.image_io import (
    discover_identities,
    folder_images,
    read_identity,
    read_image,
    write_block,
    write_image_folder,
)
from utils.settings import Choice, Number, check_settings

log = logging.getLogger(__name__)

OUTPUTS = ("block", "files")

#: What ``align.py`` checks before any work.
SETTINGS = (
    Choice("align.just_resize_if_fail", (True, False)),
    Number("align.size", low=16, high=4096, integer=True),
    Number("align.tile_size", low=1, high=65_536, integer=True, optional=True),
    Choice("align.output", OUTPUTS),
    Number("align.batch_size", low=1, high=65_536, integer=True),
    Number("align.min_face_size", low=1, high=4096, integer=True),
    Number("align.thresholds", low=0, high=1, low_open=True, each=True),
    Number("align.pad", low=0, high=1),
)


def _output_exists(out_dir: Path, identity: str, output: str) -> bool:
    if output == "files":
        return (out_dir / identity).is_dir()
    return bool(glob.glob(os.path.join(glob.escape(str(out_dir)), f"{glob.escape(identity)}.grid*x*.png")))


def _read_tiles(source: Path, tile_size: int | None) -> tuple[list[np.ndarray], list[str]]:
    """The readable tiles (H, W, 3) of one identity and one line per unreadable file (a folder's other images are kept)."""
    files = folder_images(source) if source.is_dir() else [source]
    tiles: list[np.ndarray] = []
    unreadable: list[str] = []
    for path in files:
        try:
            tiles.extend(read_image(path)[None] if source.is_dir() else read_identity(path, tile_size))
        except ValueError as err:  # read_image names the file and the reason
            unreadable.append(str(err))
    return tiles, unreadable


Chunk = list[tuple[str, list[np.ndarray], list[str]]]


def _chunks(sources: dict[str, Path], tile_size: int | None, min_tiles: int) -> Iterator[Chunk]:
    """Groups of (identity, tiles, unreadable files) with at least ``min_tiles`` tiles (the last may have fewer)."""
    group: Chunk = []
    for identity, source in sources.items():
        group.append((identity, *_read_tiles(source, tile_size)))
        if sum(len(t) for _, t, _ in group) >= min_tiles:
            yield group
            group = []
    if group:
        yield group


def align_identities(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    aligner: FaceAligner,
    just_resize_if_fail: bool = True,
    template: str = "arcface",
    size: int = 112,
    tile_size: int | None = None,
    output: str = "block",
    batch_size: int = 64,
    report_path: str | os.PathLike | None = None,
    settings: dict | None = None,
) -> dict:
    """Align every identity of ``input_dir`` (blocks, identity folders or single images) into ``output_dir``.

    Args:
        aligner: a built :class:`alignment.aligner.FaceAligner` (MTCNN on its device).
        just_resize_if_fail: resize a tile without a detected face to ``size`` (True) or drop it (False).
        template, size: the warp target (``arcface``, 112 px: the crops FR models are trained on).
        tile_size: tile side of original blocks without a ``.grid`` tag (None for ours and for photos).
        output: ``block`` (``<id>.grid<r>x<c>.png``) or ``files`` (``<id>/<k>.png``).
        batch_size: tiles per MTCNN call, gathered across identities.
        report_path: JSON report (default ``<output_dir>/alignment_report.json``); merged on resume.
        settings: recorded in the report as ``settings`` (``align.py`` passes its ``align`` config).
    Returns:
        The report: ``{"identities": {id: {"detected", "resized", "dropped"}}, "unreadable": {id: [file: reason]},
        "totals": {...}, "input_dir": absolute input folder, "settings": {...}, "just_resize_if_fail": bool}``.
    Raises:
        ValueError: ``input_dir`` holds no identity, or none of its images could be read.
    """
    if output not in OUTPUTS:
        raise ValueError(f"align.output must be one of {OUTPUTS}, found {output!r}")
    out_dir = Path(output_dir)
    report_path = Path(report_path) if report_path is not None else out_dir / "alignment_report.json"
    report: dict = json.loads(report_path.read_text()) if report_path.is_file() else {"identities": {}}
    report.setdefault("unreadable", {})
    report["input_dir"] = str(Path(input_dir).resolve())
    report["settings"] = {"template": template, "size": int(size), "tile_size": tile_size, "output": output,
                          "batch_size": int(batch_size), **(settings or {})}
    sources = discover_identities(input_dir)
    if not sources:
        raise ValueError(f"align.input_dir={input_dir} holds no identity blocks, identity folders or images")
    pending = {i: s for i, s in sources.items() if not (i in report["identities"] and _output_exists(out_dir, i, output))}
    log.info("aligning %d identities (%d already done) from %s", len(pending), len(sources) - len(pending), input_dir)
    with tqdm(total=len(pending), desc="aligning", unit="id") as bar:
        for group in _chunks(pending, tile_size, batch_size):
            tiles = [t for _, block, _ in group for t in block]
            aligned = aligner.align(tiles, template=template, size=size) if tiles else []
            offset = 0
            for identity, block, unreadable in group:
                report["unreadable"].pop(identity, None)
                if unreadable:
                    log.warning("skipping unreadable image(s) of %s: %s", identity, "; ".join(unreadable))
                    report["unreadable"][identity] = unreadable
                if not block:  # nothing readable: no output, retried by the next run
                    bar.update(1)
                    continue
                counts = {"detected": 0, "resized": 0, "dropped": 0}
                kept = []
                for tile, crop in zip(block, aligned[offset : offset + len(block)]):
                    if crop is not None:
                        counts["detected"] += 1
                        kept.append(crop)
                    elif just_resize_if_fail:
                        counts["resized"] += 1
                        kept.append(cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA))
                    else:
                        counts["dropped"] += 1
                offset += len(block)
                if kept and output == "block":
                    write_block(out_dir, identity, np.stack(kept))
                elif kept:
                    write_image_folder(out_dir, identity, kept)
                report["identities"][identity] = counts
                bar.update(1)
            _write_report(report, report_path, just_resize_if_fail)
    report = _write_report(report, report_path, just_resize_if_fail)
    log.info("alignment done: %s -> %s (report %s)", report["totals"], out_dir, report_path)
    if not report["identities"]:
        raise ValueError(f"align.input_dir={input_dir}: no image could be read ({report['totals']['unreadable']} "
                         f"unreadable files, listed in {report_path})")
    return report


def _write_report(report: dict, path: Path, just_resize_if_fail: bool) -> dict:
    keys = ("detected", "resized", "dropped")
    report["totals"] = {k: sum(c[k] for c in report["identities"].values()) for k in keys}
    report["totals"]["identities"] = len(report["identities"])
    report["totals"]["unreadable"] = sum(len(files) for files in report["unreadable"].values())
    report["just_resize_if_fail"] = bool(just_resize_if_fail)
    write_json_atomic(path, report, indent=1)
    return report


def align_from_config(cfg: DictConfig) -> dict:
    """``align.py``: build the MTCNN aligner from ``cfg.align`` and run :func:`align_identities`."""
    check_settings(cfg, SETTINGS)
    a = cfg.align
    aligner = FaceAligner(device=cfg.device, min_face_size=int(a.min_face_size), thresholds=list(a.thresholds),
                          batch_size=int(a.batch_size), pad=float(a.pad))
    return align_identities(a.input_dir, a.output_dir, aligner, bool(a.just_resize_if_fail), a.template, int(a.size),
                            a.tile_size, a.output, int(a.batch_size), a.report,
                            settings=OmegaConf.to_container(a, resolve=True))
