"""Class folders from identity blocks (``split_identity_blocks.py``): the layout FR trainers read.

Blocks (``<id>.grid<r>x<c>.png``) or per-identity folders -> ``<out>/<identity>/<k>.png``, keeping
identities with enough images and optionally exactly N identities x K images (the paper cut 10,050
aligned identities to 10,000 x 50). Identities whose folder exists are skipped; every folder is
written under a temporary name and renamed. ``dataset_card.md``/``.json`` describe the result
(:mod:`dataset_building.card`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from tqdm import tqdm

from dataset_building.card import count_class_folders, write_dataset_card
from utils.image_io import (
    BLOCK_PATTERN,
    discover_identities,
    folder_images,
    read_identity,
    write_image_folder,
)

log = logging.getLogger(__name__)


def count_images(source: Path, tile_size: int | None = None) -> int:
    """Images of one identity: from the block name, the folder listing, or (original blocks) by reading."""
    match = BLOCK_PATTERN.match(source.name)
    if match:
        return int(match["rows"]) * int(match["cols"])
    if source.is_dir():
        return len(folder_images(source))
    return len(read_identity(source, tile_size))


def split_identities(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    min_images: int = 1,
    identities: int | None = None,
    images_per_identity: int | None = None,
    tile_size: int | None = None,
    evaluation_report: str | os.PathLike | None = None,
    filter_report: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Write ``<output_dir>/<identity>/<k>.png`` for every identity of ``input_dir`` that qualifies.

    Args:
        min_images: drop identities with fewer images.
        identities: keep exactly this many identities (the first in natural name order); an error if
            fewer qualify.
        images_per_identity: keep exactly this many images per identity (the first K); identities with
            fewer are dropped.
        tile_size: tile side of original blocks without a ``.grid`` tag.
        evaluation_report, filter_report: ``evaluate.py``'s ``report.json`` and a filter step's report,
            for the dataset card.
    Returns:
        ``{"identities": kept, "images": kept images, "too_few": identities with too few images,
        "left_out": qualifying identities beyond ``identities``}``.
    """
    if identities is not None and images_per_identity is None:
        raise ValueError("--identities N needs --images-per-identity K (the paper: 10000 x 50)")
    sources = discover_identities(input_dir)
    need = max(int(min_images), int(images_per_identity or 0))
    counts = {identity: count_images(source, tile_size) for identity, source in sources.items()}
    eligible = [identity for identity in sources if counts[identity] >= need]
    too_few = len(sources) - len(eligible)
    if identities is not None:
        if len(eligible) < identities:
            raise ValueError(f"{input_dir}: only {len(eligible)} of {len(sources)} identities have >= {need} images, "
                             f"fewer than --identities {identities}")
        eligible = eligible[:identities]
    out_dir = Path(output_dir)
    images = 0
    for identity in tqdm(eligible, desc="splitting", unit="id"):
        kept = images_per_identity or counts[identity]
        images += kept
        if not (out_dir / identity).is_dir():
            write_image_folder(out_dir, identity, read_identity(sources[identity], tile_size)[:kept])
    summary = {"identities": len(eligible), "images": images, "too_few": too_few,
               "left_out": len(sources) - too_few - len(eligible)}
    log.info("split %s -> %s: %s", input_dir, out_dir, summary)
    settings = {"min_images": int(min_images), "identities": identities, "images_per_identity": images_per_identity,
                "tile_size": tile_size, **summary}
    write_dataset_card(out_dir, input_dir, {"tool": "split_identity_blocks.py", "settings": settings},
                       count_class_folders(out_dir), evaluation_report, filter_report)
    return summary
