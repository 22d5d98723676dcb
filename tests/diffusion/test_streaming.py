"""sample.py straight into shards: in-process alignment + ShardSetWriter equals blocks -> align.py -> export_dataset.py,
a killed run resumes to the same bytes, two processes + merge equal one, bad settings are one line.

The tiny random model's 16x16 samples hold no face: MTCNN finds none, so the real-MTCNN tests go the
``just_resize_if_fail`` path, and a fake aligner (a fixed function of each image, "no face" for about
a third of them) checks the detected and dropped paths against align.py given the same aligner.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from alignment.blocks import align_from_config, align_identities
from contexts.sources import save_original_contexts, synthetic_uniform
from dataset_building.export import export_dataset
from dataset_building.recordio import RecordReader, read_property, unpack
from diffusion.fingerprint import FINGERPRINT
from diffusion.generation import generate_dataset, generate_into, load_trained_model, sample_from_config
from diffusion.sampling_settings import SamplerSettings
from diffusion.streaming import ALIGNMENT_REPORT, AlignSettings, BlockWriter, ShardSettings, ShardStream
from embedding.files import EmbeddingSet
from tests.diffusion.tiny_runs import CONTEXT_DIM, make_run
from utils.config import compose

pytestmark = pytest.mark.usefixtures("one_thread")

#: out of natural order in the file, as names of authentic contexts may be: labels follow natural order
NAMES = ["id10", "id2", "id1", "id3", "id0"]
LABEL_ORDER = ["id0", "id1", "id2", "id3", "id10"]
N_IMAGES = 3
ALIGN_KEYS = ("template", "size", "min_face_size", "pad", "just_resize_if_fail", "batch_size")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "tiny-run")


@pytest.fixture(scope="module")
def contexts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    contexts = synthetic_uniform(len(NAMES), CONTEXT_DIM, seed=4)
    return save_original_contexts(tmp_path_factory.mktemp("ids") / "ids.npy", EmbeddingSet(NAMES, contexts.embeddings))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the dataset card, which names its own folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith("dataset_card.")}


def sample(run_dir: Path, contexts_file: Path, out: Path, *overrides: str):
    return sample_from_config(compose("sample_config", [
        f"checkpoint.path={run_dir}", f"sampling.contexts_file={contexts_file}", f"sampling.out_dir={out}",
        "sampling.n_contexts=null", f"sampling.n_samples_per_context={N_IMAGES}", "sampling.sampler=ddim",
        "sampling.steps=3", "sampling.seed=3", "sampling.batch_size=4", "sampling.micro_batch=4",
        "sampling.shards.identities_per_shard=2", "device=cpu", *overrides]))


def read_rec(folder: Path) -> list[tuple[int, bytes]]:
    reader = RecordReader(folder / "train.rec")
    records = [unpack(reader.read(key)) for key in reader.image_keys()]
    return [(int(header.label), np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).tobytes())
            for header, image in records]


def same_report(streamed: dict, aligned: dict) -> None:
    """align.py's report layout: per identity and total counts, the resize rule."""
    assert streamed["identities"] == aligned["identities"]
    assert streamed["totals"] == aligned["totals"]
    assert streamed["just_resize_if_fail"] == aligned["just_resize_if_fail"]


def test_rec_equals_blocks_then_align_py_then_export(tmp_path: Path, run_dir: Path, contexts_file: Path) -> None:
    """Real MTCNN on the sampling device, JPEG records, a shuffled merge: the same train.rec, byte for byte."""
    summary = sample(run_dir, contexts_file, tmp_path / "streamed", "sampling.output=rec")
    streamed = tmp_path / "streamed" / "tiny-run" / "ids"
    assert (summary.written, summary.images, summary.export["num_images"]) == (5, 15, 15)

    sample(run_dir, contexts_file, tmp_path / "blocks", "sampling.output=block")
    align = compose("sample_config").sampling.align
    report = align_from_config(compose("align_config", [
        f"align.input_dir={tmp_path / 'blocks' / 'tiny-run' / 'ids'}", f"align.output_dir={tmp_path / 'aligned'}",
        "device=cpu", f"align.thresholds=[{','.join(map(str, align.thresholds))}]",
        *[f"align.{k}={align[k]}" for k in ALIGN_KEYS]]))
    assert report["totals"]["resized"] == 15  # no face in the tiny model's samples
    exported = export_dataset(compose("export_config", [
        f"export.input={tmp_path / 'aligned'}", f"export.output={tmp_path / 'exported'}", "export.format=rec",
        "export.identities_per_shard=2"]))

    assert summary.export == exported
    for name in ("train.rec", "train.idx", "property", "export_plan.json", "export_summary.json"):
        assert (streamed / name).read_bytes() == (tmp_path / "exported" / name).read_bytes(), name
    same_report(json.loads((streamed / ALIGNMENT_REPORT).read_text()), report)
    assert sorted(label for label, _ in read_rec(streamed)) == [label for label in range(5) for _ in range(N_IMAGES)]
    assert read_property(streamed / "property") == (5, 112, 112)
    assert sorted(p.name for p in streamed.iterdir()) == sorted([
        FINGERPRINT, ALIGNMENT_REPORT, "export_plan.json", "export_summary.json", "property", "train.idx", "train.rec",
        "dataset_card.json", "dataset_card.md"])
    # the streamed set's card follows sample.py's config copy beside it to the run, as export_dataset.py's does
    card = json.loads((streamed / "dataset_card.json").read_text())
    checkpoint = run_dir / "checkpoints" / "ema_averaged_model.ckpt"
    assert card["made_by"]["tool"] == "sample.py" and card["made_by"]["settings"]["align"]["size"] == 112
    assert card["generator"]["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert card["contexts"]["file"]["sha256"] == hashlib.sha256(contexts_file.read_bytes()).hexdigest()
    assert card["alignment"]["totals"] == report["totals"] and card["dataset"]["images"] == 15
    assert card["sampling"]["sampler"] == "ddim" and "provenance" not in card["notes"]


class FakeAligner:
    """A face in every image whose byte hash is not a multiple of 3; its 'crop' is a fixed function of the image."""

    def align(self, images: Sequence[np.ndarray], template: str = "arcface", size: int | None = None) -> list:
        found = [int(hashlib.sha256(image.tobytes()).hexdigest(), 16) % 3 != 0 for image in images]
        return [cv2.resize(np.ascontiguousarray(image[::-1]), (size, size), interpolation=cv2.INTER_NEAREST)
                if face else None for image, face in zip(images, found, strict=True)]


@pytest.mark.parametrize("fmt", ["rec", "webdataset", "folders"])
def test_detected_and_dropped_faces_equal_align_py_then_export(tmp_path: Path, run_dir: Path, fmt: str) -> None:
    """Library level with the same fake aligner both ways, just_resize_if_fail=false: same files, same counts."""
    model = load_trained_model(run_dir)
    embeddings = synthetic_uniform(len(NAMES), CONTEXT_DIM, seed=4).embeddings
    settings = SamplerSettings(sampler="ddim", steps=3, micro_batch=4)
    align = AlignSettings(just_resize_if_fail=False)
    shards = ShardSettings(fmt, identities_per_shard=2, image_format="png", shuffle_seed=None, keep_shards=True)
    stream = ShardStream(tmp_path / "streamed", NAMES, (0, 1), shards, align, FakeAligner())
    summary = generate_into(model, NAMES, embeddings, stream, N_IMAGES, settings, seed=3, batch_size=4)

    generate_dataset(model, NAMES, embeddings, tmp_path / "blocks", N_IMAGES, settings, seed=3, batch_size=4)
    report = align_identities(tmp_path / "blocks", tmp_path / "aligned", FakeAligner(), just_resize_if_fail=False)
    totals = report["totals"]
    assert totals["detected"] > 0 and totals["dropped"] > 0 and totals["resized"] == 0  # measured 11 and 4
    exported = export_dataset(compose("export_config", [
        f"export.input={tmp_path / 'aligned'}", f"export.output={tmp_path / 'exported'}", f"export.format={fmt}",
        "export.identities_per_shard=2", "export.image_format=png", "export.rec.shuffle_seed=null",
        "export.rec.keep_shards=true"]))

    assert summary.export == exported and exported["num_images"] == totals["detected"]
    ours, theirs = tree(tmp_path / "streamed"), tree(tmp_path / "exported")
    for folder in ("streamed", "exported"):  # both write a dataset card
        assert (tmp_path / folder / "dataset_card.json").is_file() and (tmp_path / folder / "dataset_card.md").is_file()
    assert {name: ours[name] for name in theirs} == theirs  # every file of the export, byte for byte
    pieces = [f"{'shards/' if fmt == 'rec' else ''}shard-00000{s}.alignment.json" for s in range(3)]
    assert sorted(set(ours) - set(theirs)) == sorted([ALIGNMENT_REPORT, *pieces])
    same_report(json.loads(ours[ALIGNMENT_REPORT]), report)
    assert list(json.loads(ours[ALIGNMENT_REPORT])["identities"]) == LABEL_ORDER
    if fmt == "webdataset":  # the independent reader: classes in natural name order
        samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "streamed").glob("*.tar")),
                                      shardshuffle=False).decode("rgb8"))
        kept = [report["identities"][name]["detected"] for name in LABEL_ORDER]
        assert [s["cls"] for s in samples] == [label for label, n in enumerate(kept) for _ in range(n)]


def test_an_identity_with_no_face_left_stops_with_one_line(tmp_path: Path, run_dir: Path) -> None:
    class NoFace:
        def align(self, images: Sequence[np.ndarray], template: str = "arcface", size: int | None = None) -> list:
            return [None] * len(images)

    model = load_trained_model(run_dir)
    stream = ShardStream(tmp_path / "out", NAMES, (0, 1), ShardSettings("webdataset", identities_per_shard=2),
                         AlignSettings(just_resize_if_fail=False), NoFace())
    embeddings = synthetic_uniform(len(NAMES), CONTEXT_DIM, seed=4).embeddings
    with pytest.raises(ValueError, match=r"identity 'id0': no face found in any of its 3 images and "
                                         r"sampling.align.just_resize_if_fail=false; .* set sampling.align."
                                         r"just_resize_if_fail=true, or use sampling.output=block") as err:
        generate_into(model, NAMES, embeddings, stream, N_IMAGES, SamplerSettings(sampler="ddim", steps=3,
                                                                                  micro_batch=4))
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["export_plan.json"]  # no shard, no temporary


@pytest.fixture(scope="module")
def clean_runs() -> dict[str, dict[str, bytes]]:
    """format -> the files of an uninterrupted run (filled by the first test of each format)."""
    return {}


def finished_identities(folder: Path, fmt: str) -> int:
    """Identities in the finished shard files (2, 2, 1 identities) or identity folders of ``folder``."""
    if fmt == "folders":
        return sum(p.is_dir() for p in folder.iterdir() if not p.name.startswith("."))
    files = (folder / "shards").glob("*.rec") if fmt == "rec" else folder.glob("*.tar")
    return sum(1 if p.name.startswith("shard-000002") else 2 for p in files)


# The renames of a run: the fingerprint, the config copy, the export plan; per shard file (2, 2, 1 identities)
# rec: counts, sidecar, idx, rec; webdataset: counts, sidecar, tar; folders: counts then folder per identity;
# then the alignment report, the merge (rec: property, idx, rec) and the summary. The run is killed in the
# n-th rename to a file of that name.
@pytest.mark.parametrize("fmt, name, n, done", [
    ("rec", FINGERPRINT, 1, 0), ("rec", "shard-000000.alignment.json", 1, 0), ("rec", "shard-000000.idx", 1, 0),
    ("rec", "shard-000001.json", 1, 2), ("rec", "shard-000002.rec", 1, 4), ("rec", ALIGNMENT_REPORT, 1, 5),
    ("rec", "train.rec", 1, 5), ("webdataset", "shard-000000.json", 1, 0), ("webdataset", "shard-000001.tar", 1, 2),
    ("webdataset", ALIGNMENT_REPORT, 1, 5), ("folders", "id0", 1, 0), ("folders", "shard-000001.alignment.json", 2, 3),
    ("folders", ALIGNMENT_REPORT, 1, 5)])
def test_a_killed_run_resumes_to_the_same_bytes(tmp_path: Path, run_dir: Path, contexts_file: Path,
                                                clean_runs: dict, monkeypatch: pytest.MonkeyPatch, fmt: str,
                                                name: str, n: int, done: int) -> None:
    keep = ("sampling.shards.rec.keep_shards=true",)
    if fmt not in clean_runs:
        sample(run_dir, contexts_file, tmp_path / "clean", f"sampling.output={fmt}", *keep)
        clean_runs[fmt] = tree(tmp_path / "clean" / "tiny-run" / "ids")
    replace, renamed = os.replace, []

    def killed_in_the_nth_rename_to_name(src: str, dst: str) -> None:
        renamed.append(Path(dst).name)
        if renamed.count(name) == n:
            raise KeyboardInterrupt(f"killed while renaming {name}")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_in_the_nth_rename_to_name)
    with pytest.raises(KeyboardInterrupt, match=f"killed while renaming {name}"):
        sample(run_dir, contexts_file, tmp_path / "killed", f"sampling.output={fmt}", *keep)
    monkeypatch.setattr(os, "replace", replace)
    killed = tmp_path / "killed" / "tiny-run" / "ids"
    assert not (killed / "export_summary.json").exists()
    assert finished_identities(killed, fmt) == done  # identities in finished shard files or folders
    summary = sample(run_dir, contexts_file, tmp_path / "killed", f"sampling.output={fmt}", *keep)
    assert (summary.skipped, summary.written) == (done, 5 - done)  # finished work is kept, not redone
    assert tree(killed) == clean_runs[fmt]  # no temporaries left, same bytes


@pytest.mark.parametrize("fmt", ["rec", "webdataset"])
def test_two_processes_then_merge_equal_one_process(tmp_path: Path, run_dir: Path, contexts_file: Path,
                                                    fmt: str) -> None:
    one = sample(run_dir, contexts_file, tmp_path / "one", f"sampling.output={fmt}")
    first = sample(run_dir, contexts_file, tmp_path / "two", f"sampling.output={fmt}", "sampling.shard_index=1",
                   "sampling.num_shards=2")
    assert first.export is None and (first.identities, first.written) == (2, 2)  # shard file 1 of 0, 1, 2
    second = sample(run_dir, contexts_file, tmp_path / "two", f"sampling.output={fmt}", "sampling.shard_index=0",
                    "sampling.num_shards=2")
    assert (second.identities, second.written) == (3, 3) and second.export == one.export
    assert tree(tmp_path / "two" / "tiny-run" / "ids") == tree(tmp_path / "one" / "tiny-run" / "ids")
    again = sample(run_dir, contexts_file, tmp_path / "two", f"sampling.output={fmt}")  # the explicit merge step
    assert again.written == 0 and again.export == one.export


def test_a_rerun_with_other_alignment_or_shard_settings_is_refused(tmp_path: Path, run_dir: Path,
                                                                   contexts_file: Path) -> None:
    sample(run_dir, contexts_file, tmp_path, "sampling.output=webdataset", "sampling.shard_index=0",
           "sampling.num_shards=2")
    for override, expected in [("sampling.align.pad=0.1", "align.pad: 0.0 there, 0.1 now"),
                               ("sampling.shards.image_format=png", "shards.image_format: 'jpg' there, 'png' now"),
                               ("sampling.shards.identities_per_shard=3", "shards.identities_per_shard: 2 there, 3")]:
        with pytest.raises(ValueError, match=expected):
            sample(run_dir, contexts_file, tmp_path, "sampling.output=webdataset", override)


@pytest.mark.parametrize("override, message", [
    ("sampling.output=lmdb", r"sampling.output must be one of \('block', 'files', 'rec', 'webdataset', 'folders'\), "
                             r"found 'lmdb'"),
    ("sampling.align.template=celeba", r"sampling.align.template must be one of \['arcface', 'dlib'\], found 'celeba'"),
    ("sampling.align.thresholds=[0.6,0.7]", r"sampling.align.thresholds must be 3 scores in \(0, 1\]"),
    ("sampling.align.thresholds=0.6", r"sampling.align.thresholds must be 3 scores in \(0, 1\] .*found 0.6"),
    ("sampling.align.pad=1.5", r"sampling.align.pad must be a fraction in \[0, 1\], found 1.5"),
    ("sampling.align.size=8", r"sampling.align.size must be an integer in \[16, 4096\], found 8"),
    ("sampling.shards.image_format=bmp", r"sampling.shards.image_format must be one of \('png', 'jpg'\)"),
    ("sampling.shards.identities_per_shard=0", r"sampling.shards.identities_per_shard must be an integer >= 1"),
])
def test_bad_settings_are_one_line_before_any_work(tmp_path: Path, run_dir: Path, contexts_file: Path,
                                                   override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        sample(run_dir, contexts_file, tmp_path / "out", "sampling.output=rec", override)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_sampling_align_and_shards_default_to_align_py_and_export_dataset_py() -> None:
    sampling, align, export = (compose(name) for name in ("sample_config", "align_config", "export_config"))
    assert {k: sampling.sampling.align[k] for k in sampling.sampling.align} == {
        k: align.align[k] for k in sampling.sampling.align}
    shards = sampling.sampling.shards
    assert {k: shards[k] for k in shards} == {k: export.export[k] for k in shards}
    assert AlignSettings.from_config(sampling.sampling.align) == AlignSettings()
    assert ShardSettings.from_config(compose("sample_config", ["sampling.output=rec"]).sampling) == ShardSettings("rec")


def test_block_writer_owns_every_count_th_identity_and_only_its_temporaries(tmp_path: Path) -> None:
    (tmp_path / "id10").mkdir()  # finished: identity 0 of task 0 (identities 0, 2, 4 of NAMES)
    (tmp_path / ".id1.k3j9.tmp").mkdir()  # a killed write of task 0 (a folder) and of task 1
    (tmp_path / ".id1.k3j9.tmp" / "0.png").write_bytes(b"half")
    (tmp_path / ".id2.k3j9.tmp").mkdir()
    writer = BlockWriter(tmp_path, NAMES, N_IMAGES, "files", (0, 2))
    assert writer.mine == ["id10", "id1", "id0"] and writer.pending() == ["id1", "id0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".id2.k3j9.tmp", "id10"]
    (tmp_path / ".id3.grid1x3.png.x7.tmp").write_bytes(b"task 1's block")
    (tmp_path / ".id0.grid1x3.png.x7.tmp").write_bytes(b"task 0's block")
    assert BlockWriter(tmp_path, NAMES, N_IMAGES, "block", (0, 2)).pending() == ["id10", "id1", "id0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".id2.k3j9.tmp", ".id3.grid1x3.png.x7.tmp", "id10"]
    with pytest.raises(ValueError, match=r"sampling.output must be one of \('block', 'files'\) \(aligned outputs"):
        BlockWriter(tmp_path, NAMES, N_IMAGES, "rec")
