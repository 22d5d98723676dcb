"""Write a face dataset as shard files, per process, atomically and resumably.

The identities have one fixed order (``ShardPlan.names``); an identity's class label is its
position in it. Shard file ``s`` holds the identities with labels ``s*m .. s*m + m - 1`` (m =
``identities_per_shard``), so its content depends on the data only, never on how many processes
write. Process ``index`` of ``count`` (``export.shard_index``/``export.num_shards``, like
``sampling.shard_index``; by default torchrun's RANK/WORLD_SIZE) writes the shard files with
``s % count == index``.

A shard file is written under a temporary name in its final folder and renamed when complete: its
``.json`` sidecar first, then (``rec``) its ``.idx``, then the data file (``.rec`` or ``.tar``),
whose final name marks the shard as done. A finished shard is never rewritten; a killed run
removes its own temporaries and writes the unfinished shards again, with the same bytes. The first
writer records the settings and a hash of the identity list in ``export_plan.json``; a process or
a rerun with other settings or other identities is refused instead of mixing two datasets.

Formats (the layout of ``out_dir``):

* ``rec``: ``shards/shard-<s>.rec|.idx|.json``, each an insightface RecordIO file of its own
  (:mod:`dataset_building.recordio`); :func:`merge_rec` joins them into ``train.rec``,
  ``train.idx`` and ``property``.
* ``webdataset``: ``shard-<s>.tar`` + ``shard-<s>.json`` (:mod:`dataset_building.webdataset`).
* ``folders``: ``<identity>/<k>.png``, one folder per identity, each renamed into place whole.

:class:`ShardSetWriter` takes ``(identity, images)`` pushed in plan order, from a converter
(:mod:`dataset_building.export`) or directly from a generator; :func:`finalize` writes
``export_summary.json`` (and merges ``rec``) once every shard of every process exists.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_building.recordio import RecordWriter, pack
from dataset_building.webdataset import TarShardWriter, sample_key
from utils.atomic import temporary_beside, write_json_atomic
from utils.image_io import write_image_folder
from utils.names import check_name

log = logging.getLogger(__name__)

FORMATS = ("rec", "webdataset", "folders")
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}
SUMMARY = "export_summary.json"
PLAN = "export_plan.json"
REC_SHARD_DIR = "shards"


@dataclass(frozen=True)
class ShardPlan:
    """Which identities go into which shard file, and which shard files this process writes.

    Args:
        names: every identity, in the fixed order that defines the labels 0 .. C-1.
        identities_per_shard: m, identities per shard file.
        task: (index, count) of this process among the writers.
    """

    names: tuple[str, ...]
    identities_per_shard: int
    task: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("the shard plan has no identities")
        if self.identities_per_shard < 1:
            raise ValueError(f"export.identities_per_shard must be >= 1, found {self.identities_per_shard}")
        for name in self.names:
            check_name(name)
        if len(set(self.names)) != len(self.names):
            raise ValueError("the shard plan names an identity twice")

    @property
    def num_files(self) -> int:
        """S, the number of shard files."""
        return -(-len(self.names) // self.identities_per_shard)

    def labels(self, s: int) -> range:
        """The labels of shard file ``s``."""
        m = self.identities_per_shard
        return range(s * m, min((s + 1) * m, len(self.names)))

    def my_files(self) -> list[int]:
        """The shard files this process writes."""
        index, count = self.task
        return list(range(index, self.num_files, count))


def shard_name(s: int) -> str:
    """``shard-000042``."""
    return f"shard-{s:06d}"


def encode_image(image: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG or JPEG bytes (deterministic for a given Pillow)."""
    buffer = io.BytesIO()
    options = {"quality": int(jpeg_quality)} if image_format == "jpg" else {}
    Image.fromarray(image).save(buffer, format=IMAGE_FORMATS[image_format], **options)
    return buffer.getvalue()


class _OpenShard:
    """One shard file being written under temporary names."""

    def __init__(self, folder: Path, s: int, fmt: str, image_format: str) -> None:
        self.s, self.fmt, self.image_format = s, fmt, image_format
        suffixes = (".rec", ".idx") if fmt == "rec" else (".tar",)
        self.finals = [folder / f"{shard_name(s)}{x}" for x in suffixes]
        self.temps = [temporary_beside(f) for f in self.finals]
        self.identities: list[list] = []
        self.images = 0
        if fmt == "rec":
            self.rec = RecordWriter(self.temps[0], self.temps[1])
            self.rec.write(0, pack((1.0, 1.0)))  # the header, rewritten with the counts at commit
        else:
            self.tar = TarShardWriter(self.temps[0])

    def add(self, label: int, identity: str, encoded: list[bytes]) -> None:
        if self.fmt == "rec":
            for image in encoded:
                key = self.images + 1
                self.rec.write(key, pack(label, image, key=key))
                self.images += 1
        else:
            for k, image in enumerate(encoded):
                self.tar.add(sample_key(identity, k), {self.image_format: image, "cls": str(label).encode()})
            self.images += len(encoded)
        self.identities.append([label, identity, len(encoded)])

    def commit(self, sidecar: dict) -> None:
        """Finish the files, then rename sidecar, index and data file (the data file last)."""
        if self.fmt == "rec":
            n, first = self.images, 1
            for j, (_, _, count) in enumerate(self.identities):
                key = n + 1 + j
                self.rec.write(key, pack((first, first + count), key=key))
                first += count
            self.rec.write_at(0, pack((n + 1, n + 1 + len(self.identities))))
            self.rec.close()
        else:
            self.tar.close()
        write_json_atomic(self.finals[0].with_suffix(".json"), sidecar, indent=1, sort_keys=True)
        for tmp, final in zip(self.temps[::-1], self.finals[::-1], strict=True):
            os.replace(tmp, final)

    def abort(self) -> None:
        (self.rec if self.fmt == "rec" else self.tar).close()
        for tmp in self.temps:
            tmp.unlink(missing_ok=True)


class ShardSetWriter:
    """Push ``(identity, images)`` in plan order; shard files appear atomically as they fill.

    Args:
        out_dir: the dataset folder (layout in the module docstring).
        plan: the identities, shard size and this process's task.
        fmt: ``rec``, ``webdataset`` or ``folders``.
        image_format: ``png`` (lossless) or ``jpg`` (insightface's choice) inside rec/tar shards.
        jpeg_quality: JPEG quality (1-95).
        image_size: every image must be ``image_size`` x ``image_size`` (112: the ArcFace crop).
    """

    def __init__(self, out_dir: str | os.PathLike, plan: ShardPlan, fmt: str, image_format: str = "png",
                 jpeg_quality: int = 95, image_size: int = 112) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"export.format must be one of {FORMATS}, found {fmt!r}")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"export.image_format must be one of {tuple(IMAGE_FORMATS)}, found {image_format!r}")
        self.out_dir, self.plan, self.fmt = Path(out_dir), plan, fmt
        self.image_format, self.jpeg_quality, self.image_size = image_format, jpeg_quality, image_size
        self.folder = self.out_dir / REC_SHARD_DIR if fmt == "rec" else self.out_dir
        self.folder.mkdir(parents=True, exist_ok=True)
        mine = plan.my_files()
        self._check_plan()
        self._remove_stale_temporaries(mine)
        done = (self.out_dir / SUMMARY).is_file()
        self.queue = [] if done else [(label, plan.names[label]) for s in mine if not self._finished(s)
                                      for label in plan.labels(s) if not self._identity_written(label)]
        self.position = 0
        self.current: _OpenShard | None = None
        log.info("task %d/%d: %d of %d shard files to write (%d identities)", *plan.task,
                 len({label // plan.identities_per_shard for label, _ in self.queue}), len(mine), len(self.queue))

    def _check_plan(self) -> None:
        """Every process and every resume must write the same dataset: compare with ``export_plan.json``."""
        names = "\n".join(self.plan.names).encode()
        plan = {"format": self.fmt, "image_format": self.image_format, "jpeg_quality": self.jpeg_quality,
                "image_size": self.image_size, "identities_per_shard": self.plan.identities_per_shard,
                "identities": len(self.plan.names), "names_sha256": hashlib.sha256(names).hexdigest()}
        path = self.out_dir / PLAN
        if path.is_file():
            found = json.loads(path.read_text())
            changed = sorted(k for k in plan if found.get(k) != plan[k])
            if changed:
                raise ValueError(f"{self.out_dir} holds an export with other settings ({', '.join(changed)}: "
                                 f"{[found.get(k) for k in changed]} there, {[plan[k] for k in changed]} now); "
                                 "use a new export.output or the same settings")
        else:
            write_json_atomic(path, plan, indent=1, sort_keys=True)

    def _finished(self, s: int) -> bool:
        if self.fmt == "folders":
            return all(self._identity_written(label) for label in self.plan.labels(s))
        suffix = ".rec" if self.fmt == "rec" else ".tar"
        return (self.folder / f"{shard_name(s)}{suffix}").is_file()

    def _identity_written(self, label: int) -> bool:
        return self.fmt == "folders" and (self.out_dir / self.plan.names[label]).is_dir()

    def _remove_stale_temporaries(self, mine: list[int]) -> None:
        """Delete ``.<final name>.<random>.tmp`` files and folders a killed run of this task left."""
        finals = ({self.plan.names[label] for s in mine for label in self.plan.labels(s)} if self.fmt == "folders"
                  else {f"{shard_name(s)}{x}" for s in mine for x in (".rec", ".idx", ".tar", ".json")})
        for entry in self.folder.glob(".*.tmp"):
            final = entry.name[1 : -len(".tmp")].rpartition(".")[0]
            if final in finals:
                log.info("removing %s left by an interrupted run", entry.name)
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def pending(self) -> list[tuple[int, str]]:
        """``(label, identity)`` still to push, in the order :meth:`add` expects them."""
        return self.queue[self.position :]

    def add(self, identity: str, images: np.ndarray) -> None:
        """Write the images (N, H, W, 3) uint8 RGB of the next pending identity."""
        if self.position >= len(self.queue):
            raise ValueError(f"identity {identity!r} was pushed but this task has nothing left to write")
        label, expected = self.queue[self.position]
        if identity != expected:
            raise ValueError(f"expected identity {expected!r} (label {label}) next, got {identity!r}; "
                             "push identities in the order of pending()")
        images = np.asarray(images)
        size = self.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8 or not len(images):
            raise ValueError(f"identity {identity!r}: expected images as an (N>=1, {size}, {size}, 3) uint8 array, "
                             f"found {images.dtype} {images.shape} (align to export.image_size={size} first)")
        self.position += 1
        if self.fmt == "folders":
            write_image_folder(self.out_dir, identity, images)
            return
        s = label // self.plan.identities_per_shard
        if self.current is None:
            self.current = _OpenShard(self.folder, s, self.fmt, self.image_format)
        self.current.add(label, identity, [encode_image(im, self.image_format, self.jpeg_quality) for im in images])
        if label == self.plan.labels(s)[-1]:
            shard, self.current = self.current, None
            sidecar = {"shard": s, "format": self.fmt, "image_format": self.image_format, "image_size": size,
                       "images": shard.images, "identities": shard.identities}
            try:
                shard.commit(sidecar)
            except BaseException:
                shard.abort()
                raise

    def close(self) -> None:
        """Drop a partly written shard (its temporaries); finished shards stay."""
        if self.current is not None:
            self.current.abort()
            self.current = None

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
