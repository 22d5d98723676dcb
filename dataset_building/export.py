"""Convert class folders or identity blocks into ``rec``, ``webdataset`` or ``folders`` shards (``export_dataset.py``).

The input is what ``split_identity_blocks.py`` writes (``<identity>/<k>.png``) or what
``sample.py``/``align.py`` write (``<identity>.grid<r>x<c>.png`` blocks, read with
:mod:`utils.image_io`). Identities keep their natural name order (``id2`` before ``id10``),
which defines the labels; ``export.identities``/``export.images_per_identity`` select the first N
identities with at least K images and their first K images, as ``split_identity_blocks.py`` does.

Each process (``export.shard_index``/``export.num_shards``, or torchrun's RANK/WORLD_SIZE) writes
its shard files (:class:`dataset_building.shards.ShardSetWriter`); a rerun continues with the next
unfinished one. With ``export.stage=all`` the process that finds every shard file written then runs
:func:`dataset_building.merge.finalize` (the ``rec`` merge and ``export_summary.json``);
``export.stage=finalize`` runs only that step. The process that finalizes writes ``dataset_card.md`` and
``dataset_card.json`` (:mod:`dataset_building.card`; ``export.card.*`` names the evaluation and filter reports).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dataset_building.card import write_dataset_card
from dataset_building.merge import REC_FILES, finalize
from dataset_building.shards import (
    SUMMARY,
    ShardPlan,
    ShardSetWriter,
)
from dataset_building.split import count_images
from utils.distributed import resolve_task
from utils.image_io import discover_identities, read_identity
from utils.names import check_name
from utils.settings import Choice, Number, check_settings

log = logging.getLogger(__name__)

STAGES = ("all", "shards", "finalize")
#: ``export_dataset.py``'s settings, checked at start-up.
SETTINGS = (
    Choice("export.format", ("rec", "webdataset", "folders")),
    Choice("export.image_format", ("jpg", "png")),
    Number("export.jpeg_quality", 1, 95, integer=True),
    Number("export.image_size", 16, 4096, integer=True),
    Number("export.identities_per_shard", 1, 1e7, integer=True),
    Number("export.identities", 1, 1e8, integer=True, optional=True),
    Number("export.images_per_identity", 1, 1e6, integer=True, optional=True),
    Number("export.tile_size", 1, 4096, integer=True, optional=True),
    Choice("export.stage", STAGES),
    Number("export.rec.shuffle_seed", 0, 2**63 - 1, integer=True, optional=True),
    Choice("export.rec.header", (True, False)),
    Choice("export.rec.keep_shards", (True, False)),
)
EXPECTED_INPUT = "<identity>/<k>.png class folders or <identity>.grid<r>x<c>.png identity blocks"


def discover_sources(input_dir: str | os.PathLike) -> dict[str, Path]:
    """Identity -> block file or image folder in ``input_dir`` (natural name order), names checked."""
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"export.input={folder}: no such folder (expected {EXPECTED_INPUT})")
    sources = discover_identities(folder)
    if not sources:
        raise ValueError(f"export.input={folder}: found no identities (expected {EXPECTED_INPUT})")
    for name in sources:
        check_name(name, f"identity name in export.input={folder}")
    return sources


def select_identities(sources: dict[str, Path], identities: int | None = None, images_per_identity: int | None = None,
                      tile_size: int | None = None) -> list[str]:
    """The first ``identities`` names (all if None) among those with at least ``images_per_identity`` images."""
    names = list(sources)
    if images_per_identity:
        names = [n for n in names if count_images(sources[n], tile_size) >= images_per_identity]
    if identities is not None:
        if len(names) < identities:
            raise ValueError(f"export.identities={identities} but only {len(names)} of {len(sources)} identities "
                             f"have >= {images_per_identity or 1} images")
        names = names[:identities]
    if not names:
        raise ValueError(f"no identity has export.images_per_identity={images_per_identity} images")
    return names


def export_dataset(cfg: DictConfig) -> dict | None:
    """Write this process's shard files of ``cfg.export.input`` into ``cfg.export.output``, then finalize.

    Returns:
        The export summary once every shard file exists (``export_summary.json``), else None.
    """
    check_settings(cfg, SETTINGS)
    e = cfg.export
    sources = discover_sources(e.input)
    names = select_identities(sources, e.identities, e.images_per_identity, e.tile_size)
    plan = ShardPlan(tuple(names), int(e.identities_per_shard), resolve_task(e.shard_index, e.num_shards, "export"))
    if e.stage != "finalize":
        with ShardSetWriter(e.output, plan, e.format, e.image_format, int(e.jpeg_quality), int(e.image_size)) as writer:
            for _, name in tqdm(writer.pending(), desc=f"exporting ({e.format})", unit="id"):
                images = read_identity(sources[name], e.tile_size)
                writer.add(name, images[: e.images_per_identity or None])
    if e.stage == "shards":
        return None
    summary = finalize(e.output, plan, e.format, e.image_format, int(e.image_size), e.rec.shuffle_seed,
                       bool(e.rec.header), bool(e.rec.keep_shards))
    if summary is not None:
        write_export_card(cfg)
    return summary


def card_contents(out_dir: Path) -> dict:
    """What an export wrote (from its ``export_summary.json``, plus file sizes) for the dataset card."""
    summary = json.loads((out_dir / SUMMARY).read_text())
    fmt = summary["format"]
    if fmt == "rec":
        files = [{"file": name, "bytes": (out_dir / name).stat().st_size} for name in REC_FILES]
    else:
        files = [{**shard, "bytes": (out_dir / shard["file"]).stat().st_size} for shard in summary["shards"]]
    return {"format": fmt, "identities": summary["num_classes"], "images": summary["num_images"],
            "images_per_identity": summary["images_per_identity"], "image_size": summary["image_size"],
            "image_format": summary["image_format"], "rec": summary.get("rec"), "files": files}


def write_export_card(cfg: DictConfig) -> dict:
    """``dataset_card.md``/``.json`` in ``export.output``, its provenance followed back from ``export.input``."""
    e = cfg.export
    settings = {k: v for k, v in OmegaConf.to_container(e, resolve=True).items()
                if k not in ("shard_index", "stage", "card")}
    return write_dataset_card(e.output, e.input, {"tool": "export_dataset.py", "settings": settings},
                              card_contents(Path(e.output)), e.card.evaluation_report, e.card.filter_report)
