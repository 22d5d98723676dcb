"""End to end: contexts -> sample.py -> align.py -> split_identity_blocks.py, and align.py on a real photo.

Random-weight models from reduced configs (a tiny ConditionalUNet; a tiny VQ decoder for the latent
run) on the CPU; MTCNN finds no face in their noise, so those tiles go the resize/drop path, while the
astronaut photo (scikit-image, public domain) checks the real alignment path.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from alignment.aligner import (
    ARCFACE_TEMPLATE,
    FaceAligner,
    similarity_matrix,
    transform_points,
)
from alignment.blocks import align_from_config, align_identities
from contexts.sources import contexts_from_config
from dataset_building.export import export_dataset
from dataset_building.split import split_from_config, split_identities
from diffusion.fingerprint import FINGERPRINT
from diffusion.generation import sample_from_config
from models.autoencoder.vqgan import VQDecoderInterface
from tests.conftest import write_random_run
from utils.config import compose
from utils.image_io import read_block, write_block

CONTEXT_DIM = 128
TINY_VQ = {"double_z": False, "z_channels": 3, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
           "ch_mult": [1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}

pytestmark = pytest.mark.usefixtures("one_thread")


def make_run(run_dir: Path, latent: bool) -> Path:
    """A run folder (``.hydra/config.yaml`` + ``checkpoints/``) with a tiny random UNet; 32 px images."""
    model = {
        "_target_": "models.diffusion.unet.ConditionalUNet", "input_channels": 3, "initial_channels": 32,
        "channel_multipliers": [1, 1], "is_attention": [False, True], "attention_heads": -1,
        "attention_head_channels": 32, "n_blocks_per_resolution": 1, "condition_type": "CA",
        "is_context_conditional": True, "context_input_channels": CONTEXT_DIM, "context_channels": 32,
    }
    cfg = {
        "latent_diffusion": latent, "constants": {"image_size": 32, "input_channels": 3, "context_dim": CONTEXT_DIM},
        "model": model,
        "diffusion": {"_target_": "diffusion.ddpm.DenoisingDiffusionProbabilisticModel", "eps_model": "${model}", "T": 8},
    }
    if latent:
        cfg["autoencoder"] = {"embed_dim": 3, "n_embed": 64, "ddconfig": TINY_VQ}
    return write_random_run(run_dir, cfg)


@pytest.mark.parametrize("latent", [False, True], ids=["pixel", "latent"])
def test_contexts_sample_align_split(tmp_path: Path, latent: bool) -> None:
    out = tmp_path / "outputs"
    decoder_file = tmp_path / "decoder.pt"
    torch.save(VQDecoderInterface(TINY_VQ, embed_dim=3, n_embed=64).state_dict(), decoder_file)
    run = make_run(tmp_path / "tiny-run", latent)

    contexts_file, _ = contexts_from_config(compose("contexts_config", [
        f"paths.output_root={out}", "contexts.n=4", f"contexts.dim={CONTEXT_DIM}", "contexts.name=ids"]))
    sampling = [
        f"paths.output_root={out}", f"paths.vq_decoder={decoder_file}", f"checkpoint.path={run}",
        f"sampling.contexts_file={contexts_file}", "sampling.n_contexts=3", "sampling.n_samples_per_context=6",
        "sampling.sampler=ddim", "sampling.steps=4", "sampling.batch_size=8", "sampling.micro_batch=4", "device=cpu"]
    summary = sample_from_config(compose("sample_config", sampling))
    samples = out / "samples" / "tiny-run" / "ids"
    assert summary.written == 3 and sorted(p.name for p in samples.iterdir()) == sorted(
        [FINGERPRINT] + [f"{i}.grid2x3.png" for i in range(3)])
    decoder_sha256 = json.loads((samples / FINGERPRINT).read_text())["vq_decoder_sha256"]
    assert decoder_sha256 == (hashlib.sha256(decoder_file.read_bytes()).hexdigest() if latent else None)
    assert read_block(samples / "0.grid2x3.png").shape == (6, 32, 32, 3)
    assert (out / "samples" / "tiny-run" / "ids.yaml").is_file()

    aligned = out / "aligned"
    report = align_from_config(compose("align_config", [
        f"align.input_dir={samples}", f"align.output_dir={aligned}", "align.batch_size=12", "device=cpu"]))
    assert report["totals"]["identities"] == 3
    assert sum(report["totals"][k] for k in ("detected", "resized", "dropped")) == 18
    assert json.loads((aligned / "alignment_report.json").read_text()) == report
    assert all(read_block(p).shape[1:] == (112, 112, 3) for p in aligned.glob("*.png"))

    dataset = out / "dataset"
    split = split_from_config(compose("split_config", [
        f"split.input_dir={aligned}", f"split.output_dir={dataset}", "split.identities=2", "split.images_per_identity=5"]))
    assert split == {"identities": 2, "images": 10, "too_few": 0, "left_out": 1}
    assert sorted(p.name for p in dataset.iterdir()) == ["0", "1", "dataset_card.json", "dataset_card.md"]
    card = json.loads((dataset / "dataset_card.json").read_text())  # the chain reaches the run (tests/dataset_building)
    assert card["generator"]["run_name"] == "tiny-run" and card["contexts"]["source"] == "synthetic_uniform"
    assert sorted(p.name for p in (dataset / "0").iterdir()) == [f"{k}.png" for k in range(5)]

    # the same in one step: sample.py aligns in-process and writes the class folders export_dataset.py writes
    streamed = sample_from_config(compose("sample_config", [*sampling, f"sampling.out_dir={out / 'streamed'}",
                                                             "sampling.output=folders"]))
    exported = export_dataset(compose("export_config", [
        f"export.input={aligned}", f"export.output={out / 'exported'}", "export.format=folders"]))
    assert streamed.export == exported and exported["num_images"] == 18
    streamed_dir = out / "streamed" / "tiny-run" / "ids"
    for identity in ("0", "1", "2"):
        assert tree(streamed_dir / identity) == tree(out / "exported" / identity)
    assert json.loads((streamed_dir / "alignment_report.json").read_text())["totals"] == report["totals"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def astronaut_tiles(n: int) -> np.ndarray:
    """``n`` 128x128 face tiles cut from skimage's astronaut with a few pixels of jitter; (n, 128, 128, 3)."""
    from skimage.data import astronaut

    image = astronaut()
    tiles = [cv2.resize(image[32 + d : 202 + d, 139 - d : 309 - d], (128, 128), interpolation=cv2.INTER_AREA)
             for d in np.linspace(-8, 8, n).astype(int)]
    return np.stack(tiles)


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner(device="cpu", batch_size=8)


@pytest.mark.parametrize("just_resize_if_fail", [True, False])
def test_align_real_photo_and_no_face_tile(tmp_path: Path, aligner: FaceAligner, just_resize_if_fail: bool) -> None:
    faces = astronaut_tiles(3)
    no_face = np.full((1, 128, 128, 3), 127, np.uint8)
    write_block(tmp_path / "in", "astronaut", np.concatenate([faces, no_face]))
    write_block(tmp_path / "in", "blank", np.concatenate([no_face, no_face]))
    report = align_identities(tmp_path / "in", tmp_path / "out", aligner, just_resize_if_fail, output="files")

    kept = 1 if just_resize_if_fail else 0
    assert report["identities"]["astronaut"] == {"detected": 3, "resized": kept, "dropped": 1 - kept}
    assert report["identities"]["blank"] == {"detected": 0, "resized": 2 * kept, "dropped": 2 - 2 * kept}
    assert len(list((tmp_path / "out" / "astronaut").iterdir())) == 3 + kept
    assert (tmp_path / "out" / "blank").is_dir() == just_resize_if_fail  # nothing left: no folder

    # The written crops are the warps of the detected points: MTCNN finds them again within 3 px of where
    # the warp put them (a smiling face cannot put all 5 on the template; tests/utils/test_alignment.py
    # checks the template itself on a face that fits it).
    crops = [cv2.imread(str(tmp_path / "out" / "astronaut" / f"{k}.png"))[:, :, ::-1].copy() for k in range(3)]
    for tile, redetected in zip(aligner.detect(list(faces)), aligner.detect(crops)):
        assert redetected is not None
        warped = transform_points(similarity_matrix(tile.landmarks, ARCFACE_TEMPLATE), tile.landmarks)
        assert np.linalg.norm(redetected.landmarks - warped, axis=1).max() < 3.0


def test_align_skips_and_reports_unreadable_images(tmp_path: Path, aligner: FaceAligner) -> None:
    write_block(tmp_path / "in", "good", astronaut_tiles(2))
    (tmp_path / "in" / "5.grid1x2.png").write_bytes(b"not a png")
    folder = tmp_path / "in" / "mixed"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), astronaut_tiles(1)[0][:, :, ::-1])
    (folder / "1.png").write_bytes(b"\x89PNG truncated")
    report = align_identities(tmp_path / "in", tmp_path / "out", aligner, output="files")

    assert set(report["identities"]) == {"good", "mixed"}  # the unreadable block has no output and no counts
    assert report["identities"]["mixed"] == {"detected": 1, "resized": 0, "dropped": 0}
    assert sorted(report["unreadable"]) == ["5", "mixed"]
    assert "5.grid1x2.png is not a readable image" in report["unreadable"]["5"][0]
    assert "1.png is not a readable image" in report["unreadable"]["mixed"][0]
    assert report["totals"]["unreadable"] == 2
    assert json.loads((tmp_path / "out" / "alignment_report.json").read_text()) == report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["alignment_report.json", "good", "mixed"]


def test_align_with_nothing_readable_says_so(tmp_path: Path, aligner: FaceAligner) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="holds no identity blocks, identity folders or images"):
        align_identities(tmp_path / "in", tmp_path / "out", aligner)
    (tmp_path / "in" / "5.grid1x2.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"no image could be read \(1 unreadable files"):
        align_identities(tmp_path / "in", tmp_path / "out", aligner)


def test_split_min_images_and_too_few_identities(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    write_block(tmp_path / "in", "a", images)
    write_block(tmp_path / "in", "b", images[:2])
    summary = split_identities(tmp_path / "in", tmp_path / "out", min_images=3)
    assert summary == {"identities": 1, "images": 5, "too_few": 1, "left_out": 0}
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["a"]
    with pytest.raises(ValueError, match="only 1 of 2 identities have >= 3 images, fewer than --identities 2"):
        split_identities(tmp_path / "in", tmp_path / "o2", identities=2, images_per_identity=3)
