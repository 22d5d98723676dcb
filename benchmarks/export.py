"""Images/s of writing and reading a face dataset as insightface RecordIO, WebDataset tar shards and class folders.

Run from the project root: ``python benchmarks/export.py`` (100,000 and 1,000,000 images;
``--quick``: 10,000 and 50,000; ``--sizes`` any). Identities hold 50 images each (the paper's
depth) and shard files 1,000 identities (``export.identities_per_shard``). The images are 50
112x112 face crops of the demo's public-domain photos (``data/demo/faces``), JPEG-encoded once
(``export.image_format=jpg``, quality 95; about 7 KB each, like aligned faces) and reused, so the
figures measure the formats, not the encoder (its own rate is printed as
``jpeg_encode_images_per_s``).

Writing uses the exporter's own code per format: a shard file of :mod:`dataset_building.shards`
(``rec``: RecordIO shards, then :func:`dataset_building.merge.merge_rec` into one shuffled
``train.rec``, shards then deleted; ``webdataset``: tar shards) and, for class folders, one
:func:`utils.atomic.atomic_folder` per identity with a file per image (what ``write_image_folder``
does after encoding). Reading gets every image's bytes and label, without decoding: ``rec`` by
its index in a shuffled order (``MXFaceDataset``'s random access), tar shards front to back (the
streaming reader), class folders by listing them and opening each file in a shuffled order
(``ImageFolder``). Each (format, size, write|read) runs in a fresh process, whose peak RSS and CPU
time (user + system, which a shared machine's load inflates far less than wall time) are
reported. The page cache is warm (files read right after they were written). The last line
printed is one JSON object; ``speedup`` = shard images/s / class-folder images/s (``*_cpu``: per
CPU second).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_building.merge import merge_rec
from dataset_building.recordio import RecordReader, unpack
from dataset_building.shards import REC_SHARD_DIR, _OpenShard
from dataset_building.webdataset import image_and_label, iter_samples, list_shards
from utils.atomic import atomic_folder
from utils.image_io import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)

FORMATS = ("folders", "rec", "webdataset")
DEPTH = 50
IDENTITIES_PER_SHARD = 1000
SIZE = 112
DEMO_FACES = Path(__file__).resolve().parents[1] / "data" / "demo" / "faces"


def face_crops(n: int = DEPTH) -> list[np.ndarray]:
    """``n`` (112, 112, 3) uint8 face crops: centred squares of the demo's public-domain photos, zoomed in steps."""
    photos = [read_image(p) for p in sorted(DEMO_FACES.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    out = []
    for k in range(n):
        photo = photos[k % len(photos)]
        h, w = photo.shape[:2]
        side = min(h, w) * (40 - k // len(photos)) // 40
        top, left = (h - side) // 2, (w - side) // 2
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((SIZE, SIZE), Image.BICUBIC)
        out.append(np.asarray(crop))
    return out


def encode(images: list[np.ndarray]) -> list[bytes]:
    """JPEG quality 95, as ``export.image_format=jpg`` writes."""
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        encoded.append(buffer.getvalue())
    return encoded


def write(fmt: str, out: Path, n_images: int) -> dict:
    """Write ``n_images`` (``n_images / 50`` identities) in ``fmt`` into ``out``; seconds per step."""
    encoded = encode(face_crops())
    identities = n_images // DEPTH
    times: dict[str, float] = {}
    start = time.perf_counter()
    if fmt == "folders":
        for label in range(identities):
            with atomic_folder(out / str(label)) as tmp:
                for k, data in enumerate(encoded):
                    (tmp / f"{k}.jpg").write_bytes(data)
        times["write_s"] = time.perf_counter() - start
        return times
    folder = out / REC_SHARD_DIR if fmt == "rec" else out
    folder.mkdir(parents=True, exist_ok=True)
    sidecars = []
    for s in range(-(-identities // IDENTITIES_PER_SHARD)):
        shard = _OpenShard(folder, s, fmt, "jpg")
        for label in range(s * IDENTITIES_PER_SHARD, min((s + 1) * IDENTITIES_PER_SHARD, identities)):
            shard.add(label, str(label), encoded)
        sidecar = {"shard": s, "format": fmt, "image_format": "jpg", "image_size": SIZE, "images": shard.images,
                   "identities": shard.identities}
        shard.commit(sidecar)
        sidecars.append(sidecar)
    times["write_s"] = time.perf_counter() - start
    if fmt == "rec":
        start = time.perf_counter()
        merge_rec(out, sidecars, identities, SIZE, seed=0, header=True)
        shutil.rmtree(folder)  # as finalize does with export.rec.keep_shards=false
        times["merge_s"] = time.perf_counter() - start
    return times


def read(fmt: str, out: Path, seed: int = 0) -> tuple[int, int, float]:
    """(images, bytes, seconds) of reading every image's bytes and label, in the order a trainer reads them."""
    rng = np.random.default_rng(seed)
    n = n_bytes = 0
    start = time.perf_counter()
    if fmt == "rec":
        reader = RecordReader(out / "train.rec")
        for key in rng.permutation(reader.image_keys()):
            header, image = unpack(reader.read(int(key)))
            n, n_bytes = n + 1, n_bytes + len(image)
        reader.close()
    elif fmt == "webdataset":
        for shard in list_shards(out):
            for key, fields in iter_samples(shard):
                image, _ = image_and_label(key, fields)
                n, n_bytes = n + 1, n_bytes + len(image)
    else:
        samples = []  # (path, label), as torchvision's ImageFolder lists them
        classes = sorted(e.name for e in os.scandir(out) if e.is_dir() and not e.name.startswith("."))
        for label, name in enumerate(classes):
            samples += [(f.path, label) for f in os.scandir(out / name) if Path(f.name).suffix in IMAGE_SUFFIXES]
        for j in rng.permutation(len(samples)):
            with open(samples[j][0], "rb") as f:
                n, n_bytes = n + 1, n_bytes + len(f.read())
    return n, n_bytes, time.perf_counter() - start


def disk_usage(folder: Path) -> tuple[int, int]:
    """(bytes in files, bytes allocated on disk) under ``folder``."""
    size = allocated = 0
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(root, name))
            size, allocated = size + st.st_size, allocated + st.st_blocks * 512
    return size, allocated


def run_phase(phase: str, fmt: str, out: str, n_images: int) -> dict:
    """One phase in this (fresh) process: its result and the process's peak RSS in MiB."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = time.process_time()
    if phase == "write":
        result = write(fmt, Path(out), n_images)
    else:
        n, n_bytes, seconds = read(fmt, Path(out))
        if n != n_images:
            raise RuntimeError(f"read {n} images of {fmt} in {out}, expected {n_images}")
        result = {"read_s": seconds, "read_bytes": n_bytes}
    return {**result, "cpu_s": time.process_time() - cpu, "rss_start_mib": base,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def in_fresh_process(*args: object) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_phase, *args).result()


def measure(fmt: str, n_images: int, workdir: Path) -> dict:
    """Write, read, size and delete one dataset; images/s and peak RSS of each phase."""
    out = Path(tempfile.mkdtemp(prefix=f"{fmt}_{n_images}_", dir=workdir))
    try:
        w = in_fresh_process("write", fmt, str(out), n_images)
        r = in_fresh_process("read", fmt, str(out), n_images)
        size, allocated = disk_usage(out)
    finally:
        start = time.perf_counter()
        shutil.rmtree(out)
        delete_s = time.perf_counter() - start
    result = {"write_images_per_s": n_images / w["write_s"], "read_images_per_s": n_images / r["read_s"],
              "write_images_per_cpu_s": n_images / w["cpu_s"], "read_images_per_cpu_s": n_images / r["cpu_s"],
              "write_peak_rss_mib": w["peak_rss_mib"], "read_peak_rss_mib": r["peak_rss_mib"],
              "process_start_rss_mib": w["rss_start_mib"], "bytes_per_image": size / n_images,
              "disk_bytes_per_image": allocated / n_images, "delete_s": delete_s}
    if "merge_s" in w:
        result["shards_write_images_per_s"] = result["write_images_per_s"]
        result["merge_images_per_s"] = n_images / w["merge_s"]
        result["write_images_per_s"] = n_images / (w["write_s"] + w["merge_s"])  # shards + merge into train.rec
    log.info("%s, %d images: %s", fmt, n_images, json.dumps({k: round(v, 1) for k, v in result.items()}))
    return result


def speedups(results: dict, formats: list[str]) -> dict:
    """Shard rate / class-folder rate, per wall second and per CPU second, for writing and reading."""
    folders = results["folders"]
    return {f"{fmt}_{io_}{per}": results[fmt][f"{io_}_images_per{per}_s"] / folders[f"{io_}_images_per{per}_s"]
            for fmt in formats if fmt != "folders" for io_ in ("write", "read") for per in ("", "_cpu")}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="images per dataset")
    parser.add_argument("--quick", action="store_true", help="10,000 and 50,000 images")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--workdir", default=None, help="where the datasets are written (default: the temp folder)")
    args = parser.parse_args(argv)
    sizes = [10_000, 50_000] if args.quick else args.sizes
    if any(n % DEPTH for n in sizes):
        raise ValueError(f"--sizes must be multiples of {DEPTH} (images per identity), found {sizes}")
    workdir = Path(args.workdir or tempfile.gettempdir())
    images = face_crops()
    start = time.perf_counter()
    encoded = encode(images * 10)
    encode_rate = len(encoded) / (time.perf_counter() - start)
    load_before = os.getloadavg()
    results = {str(n): {fmt: measure(fmt, n, workdir) for fmt in args.formats} for n in sizes}
    speedup = {str(n): speedups(results[str(n)], args.formats) for n in sizes} if "folders" in args.formats else {}
    rss_growth = {fmt: {phase: results[str(sizes[-1])][fmt][f"{phase}_peak_rss_mib"]
                        / results[str(sizes[0])][fmt][f"{phase}_peak_rss_mib"] for phase in ("write", "read")}
                  for fmt in args.formats}
    return {"benchmark": "export", "sizes": sizes, "images_per_identity": DEPTH,
            "identities_per_shard": IDENTITIES_PER_SHARD, "jpeg_bytes_mean": float(np.mean([len(b) for b in encoded])),
            "jpeg_encode_images_per_s": encode_rate, "results": results, "speedup": speedup,
            "peak_rss_ratio_largest_to_smallest": rss_growth, "cpu": cpu_name(),
            "cores": os.cpu_count(), "load_avg_1min_before_after": [load_before[0], os.getloadavg()[0]]}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(main()))
