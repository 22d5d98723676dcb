"""Class folders from identity blocks (``split_identity_blocks.py``): the layout FR trainers read.

Blocks (``<id>.grid<r>x<c>.png``) or per-identity folders -> ``<out>/<identity>/<k>.png``, keeping
identities with enough images and optionally exactly N identities x K images (the paper cut 10,050
aligned identities to 10,000 x 50). With a filter report (``filter_identities.py``) only its kept
identities and their kept images are used, then cut to N x K. Identities whose folder exists are
skipped; every folder is written under a temporary name and renamed, and the temporaries a killed
run left are removed on the rerun. Every identity name is checked (:func:`utils.names.check_names`)
before anything is written.
``dataset_card.md``/``.json`` describe the result (:mod:`dataset_building.card`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from dataset_building.card import count_class_folders, write_dataset_card
from dataset_building.filter_report import FilterReport
from utils.atomic import remove_temporaries
from utils.image_io import (
    BLOCK_PATTERN,
    discover_identities,
    folder_images,
    read_identity,
    write_image_folder,
)
from utils.names import check_names
from utils.settings import Number, check_settings

log = logging.getLogger(__name__)

#: What ``split_identity_blocks.py`` checks before any work.
SETTINGS = (
    Number("split.min_images", low=1, high=10**6, integer=True),
    Number("split.identities", low=1, high=10**8, integer=True, optional=True),
    Number("split.images_per_identity", low=1, high=10**6, integer=True, optional=True),
    Number("split.tile_size", low=1, high=65_536, integer=True, optional=True),
)


def count_images(source: Path, tile_size: int | None = None) -> int:
    """Images of one identity: from the block name, the folder listing, or (original blocks) by reading."""
    match = BLOCK_PATTERN.match(source.name)
    if match:
        return int(match["rows"]) * int(match["cols"])
    if source.is_dir():
        return len(folder_images(source))
    return len(read_identity(source, tile_size))


def report_selection(report_path: str | os.PathLike, sources: dict[str, Path], tile_size: int | None) -> dict[str, list[int]]:
    """Kept image indices per kept identity of a filter report, checked against the identities found in the input."""
    report = FilterReport.load(report_path)
    for identity, entry in report.identities.items():
        if identity not in sources:
            raise ValueError(f"filter report {report_path} keeps identity {identity!r}, which is not in the input folder")
        found = count_images(sources[identity], tile_size)
        if found != entry["images"]:
            raise ValueError(f"filter report {report_path}: identity {identity!r} has {found} images in the input folder "
                             f"but {entry['images']} in the report (was the report made from these images?)")
    return {identity: entry["kept"] for identity, entry in report.identities.items()}


def split_identities(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    min_images: int = 1,
    identities: int | None = None,
    images_per_identity: int | None = None,
    tile_size: int | None = None,
    filter_report: str | os.PathLike | None = None,
    evaluation_report: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Write ``<output_dir>/<identity>/<k>.png`` for every identity of ``input_dir`` that qualifies.

    Args:
        min_images: drop identities with fewer images.
        identities: keep exactly this many identities (the first in natural name order); an error if
            fewer qualify.
        images_per_identity: keep exactly this many images per identity (the first K); identities with
            fewer are dropped.
        tile_size: tile side of original blocks without a ``.grid`` tag.
        filter_report: a report of ``filter_identities.py``: only its kept identities (in its order) and
            their kept images are used, before the cuts above; the dataset card records it.
        evaluation_report: ``evaluate.py``'s ``report.json`` of this dataset, for the dataset card.
    Returns:
        ``{"identities": kept, "images": kept images, "too_few": identities with too few images,
        "left_out": qualifying identities beyond ``identities``}``.
    """
    if identities is not None and images_per_identity is None:
        raise ValueError("--identities N needs --images-per-identity K (the paper: 10000 x 50)")
    sources = discover_identities(input_dir)
    if not sources:
        raise ValueError(f"split.input_dir={input_dir} holds no identity blocks, identity folders or images")
    check_names(sources, f"identity name in {input_dir}")
    selection = report_selection(filter_report, sources, tile_size) if filter_report is not None else None
    if selection is not None:
        sources = {identity: sources[identity] for identity in selection}
    need = max(int(min_images), int(images_per_identity or 0))
    counts = {identity: len(selection[identity]) if selection is not None else count_images(source, tile_size)
              for identity, source in sources.items()}
    eligible = [identity for identity in sources if counts[identity] >= need]
    too_few = len(sources) - len(eligible)
    if identities is not None:
        if len(eligible) < identities:
            raise ValueError(f"{input_dir}: only {len(eligible)} of {len(sources)} identities have >= {need} images, "
                             f"fewer than --identities {identities}")
        eligible = eligible[:identities]
    out_dir = Path(output_dir)
    mine = set(eligible)
    for path in remove_temporaries(out_dir, belongs=mine.__contains__):
        log.info("removed %s, left by an interrupted run", path)
    images = 0
    for identity in tqdm(eligible, desc="splitting", unit="id"):
        kept = images_per_identity or counts[identity]
        images += kept
        if not (out_dir / identity).is_dir():
            faces = read_identity(sources[identity], tile_size)
            write_image_folder(out_dir, identity, (faces if selection is None else faces[selection[identity]])[:kept])
    summary = {"identities": len(eligible), "images": images, "too_few": too_few,
               "left_out": len(sources) - too_few - len(eligible)}
    log.info("split %s -> %s: %s", input_dir, out_dir, summary)
    settings = {"min_images": int(min_images), "identities": identities, "images_per_identity": images_per_identity,
                "tile_size": tile_size, **summary}
    write_dataset_card(out_dir, input_dir, {"tool": "split_identity_blocks.py", "settings": settings},
                       count_class_folders(out_dir), evaluation_report, filter_report)
    return summary


def split_from_config(cfg: DictConfig) -> dict[str, int]:
    """``split_identity_blocks.py``: check ``cfg.split`` and run :func:`split_identities`."""
    check_settings(cfg, SETTINGS)
    c = cfg.split
    return split_identities(c.input_dir, c.output_dir, int(c.min_images), c.identities, c.images_per_identity,
                            c.tile_size, c.filter_report, c.evaluation_report)
