"""Finish a sharded export: merge ``rec`` shards into one ``train.rec`` and write ``export_summary.json``.

:func:`finalize` runs when every shard file of every process exists (any process may call it; a
process that finds shards missing leaves it to a later call). For ``rec`` it first calls
:func:`merge_rec`, which copies the image records of all shards into ``train.rec``/``train.idx``
in the canonical order (by label, then image index), optionally permuted by a seeded shuffle, so
the merged file depends only on the data and the seed, never on how many processes wrote the
shards. Without a shuffle the merged file equals, byte for byte, a single shard holding every
identity (header, images, identity records). Shuffled, image records cannot be grouped by
identity, so the header (if kept) announces no identity records: ``(n_images + 1, n_images + 1)``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from dataset_building.recordio import (
    RecordReader,
    RecordWriter,
    pack,
    unpack,
    write_property,
)
from dataset_building.shards import (
    REC_SHARD_DIR,
    SUMMARY,
    ShardPlan,
    shard_name,
)
from utils.atomic import temporary_beside, write_json_atomic
from utils.image_io import folder_images

log = logging.getLogger(__name__)

REC_FILES = ("train.rec", "train.idx", "property")


def merge_rec(out_dir: str | os.PathLike, sidecars: list[dict], num_classes: int, image_size: int,
              seed: int | None = 0, header: bool = True) -> dict:
    """Join ``<out_dir>/shards/shard-<s>.rec`` into ``<out_dir>/train.rec``, ``train.idx`` and ``property``.

    Args:
        sidecars: the shards' ``.json`` sidecars, in shard order.
        num_classes: C, written to ``property``.
        seed: permutation seed of the image records (DALI reads records in file order and shuffles
            only within a buffer); None keeps the canonical order and writes identity records.
        header: write record 0 (``arcface_torch``'s header); False gives DALI's layout (images only,
            keys from 0).
    Returns:
        ``{"images": N, "identity_records": bool, "shuffle_seed": seed, "header": header}``.
    """
    out_dir = Path(out_dir)
    readers = [RecordReader(out_dir / REC_SHARD_DIR / f"{shard_name(sc['shard'])}.rec") for sc in sidecars]
    counts = np.array([sc["images"] for sc in sidecars], dtype=np.int64)
    total = int(counts.sum())
    shard_of = np.repeat(np.arange(len(sidecars)), counts)
    key_of = np.concatenate([np.arange(1, n + 1) for n in counts])
    order = np.arange(total) if seed is None else np.random.default_rng(int(seed)).permutation(total)
    identities = [identity for sc in sidecars for identity in sc["identities"]]
    with_identity_records = header and seed is None
    finals = [out_dir / name for name in REC_FILES]
    temps = [temporary_beside(f) for f in finals]
    try:
        with RecordWriter(temps[0], temps[1]) as writer:
            if header:
                extra = len(identities) if with_identity_records else 0
                writer.write(0, pack((total + 1, total + 1 + extra)))
            for key, j in enumerate(order, start=1 if header else 0):
                record, image = unpack(readers[shard_of[j]].read(int(key_of[j])))
                writer.write(key, pack(record.label, image, key=key))
            if with_identity_records:
                first = 1
                for j, (_, _, count) in enumerate(identities):
                    writer.write(total + 1 + j, pack((first, first + count), key=total + 1 + j))
                    first += count
        write_property(temps[2], num_classes, image_size, image_size)
        for tmp, final in zip(temps[::-1], finals[::-1], strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        for reader in readers:
            reader.close()
    log.info("merged %d shards (%d images) into %s (shuffle seed %s, header %s)", len(sidecars), total,
             finals[0], seed, header)
    return {"images": total, "identity_records": with_identity_records, "shuffle_seed": seed, "header": header}


def _folder_sidecars(out_dir: Path, plan: ShardPlan) -> list[dict]:
    """Per shard file, what its identity folders hold (the ``folders`` format has no sidecars)."""
    sidecars = []
    for s in range(plan.num_files):
        identities = [[label, plan.names[label], len(folder_images(out_dir / plan.names[label]))]
                      for label in plan.labels(s)]
        sidecars.append({"shard": s, "images": sum(n for _, _, n in identities), "identities": identities})
    return sidecars


def _remove_stale_merge_temporaries(out_dir: Path) -> None:
    """Delete what a merge killed outright (SIGKILL) left: ``.train.rec.<random>.tmp`` etc. (as big as the set).

    Two processes that finish their last shards at the same moment may both merge; the one whose
    temporaries the other removes then stops with an error while the other completes the merge.
    """
    for entry in out_dir.glob(".*.tmp"):
        if entry.name[1 : -len(".tmp")].rpartition(".")[0] in REC_FILES:
            log.info("removing %s left by an interrupted merge", entry.name)
            entry.unlink()


def missing_shards(out_dir: str | os.PathLike, plan: ShardPlan, fmt: str) -> list[int]:
    """Shard files of any process that are not finished yet."""
    out_dir = Path(out_dir)
    if fmt == "folders":
        return [s for s in range(plan.num_files)
                if not all((out_dir / plan.names[label]).is_dir() for label in plan.labels(s))]
    folder, suffix = (out_dir / REC_SHARD_DIR, ".rec") if fmt == "rec" else (out_dir, ".tar")
    return [s for s in range(plan.num_files) if not (folder / f"{shard_name(s)}{suffix}").is_file()]


def finalize(out_dir: str | os.PathLike, plan: ShardPlan, fmt: str, image_format: str = "png", image_size: int = 112,
             shuffle_seed: int | None = 0, header: bool = True, keep_shards: bool = False) -> dict | None:
    """Write ``export_summary.json`` (after :func:`merge_rec` for ``rec``) once all shard files exist.

    Returns:
        The summary (format, num_classes, num_images, image size/format, images per identity
        min/max, shard files with their counts), or None while shard files are missing.
    """
    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        wanted = {"shuffle_seed": shuffle_seed, "header": header}
        if fmt == "rec" and {k: summary["rec"][k] for k in wanted} != wanted:
            raise ValueError(f"{out_dir} was merged with {({k: summary['rec'][k] for k in wanted})}, not {wanted}; "
                             "use a new export.output")
    else:
        missing = missing_shards(out_dir, plan, fmt)
        if missing:
            log.info("%d of %d shard files are not written yet (first: %s); the last process to finish merges",
                     len(missing), plan.num_files, shard_name(missing[0]))
            return None
        if fmt == "folders":
            sidecars = _folder_sidecars(out_dir, plan)
        else:
            folder = out_dir / REC_SHARD_DIR if fmt == "rec" else out_dir
            sidecars = [json.loads((folder / f"{shard_name(s)}.json").read_text()) for s in range(plan.num_files)]
        counts = [n for sc in sidecars for _, _, n in sc["identities"]]
        summary = {
            "format": fmt, "num_classes": len(plan.names), "num_images": int(sum(counts)),
            "image_size": image_size, "image_format": "png" if fmt == "folders" else image_format,
            "identities_per_shard": plan.identities_per_shard,
            "images_per_identity": {"min": min(counts), "max": max(counts)},
            "shards": [{"file": f"{shard_name(sc['shard'])}.tar", "images": sc["images"],
                        "identities": len(sc["identities"])} for sc in sidecars] if fmt == "webdataset" else [],
        }
        if fmt == "rec":
            _remove_stale_merge_temporaries(out_dir)
            summary["rec"] = merge_rec(out_dir, sidecars, len(plan.names), image_size, shuffle_seed, header)
        write_json_atomic(summary_path, summary, indent=1, sort_keys=True)
        log.info("export complete: %d identities, %d images (%s) in %s", summary["num_classes"],
                 summary["num_images"], fmt, out_dir)
    if fmt == "rec" and not keep_shards and (out_dir / REC_SHARD_DIR).is_dir():
        shutil.rmtree(out_dir / REC_SHARD_DIR)
    return summary
