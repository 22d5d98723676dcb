"""testbed.build: the DCGAN training set as a normal dataset folder + embedding file, resumable."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alignment.aligner import FaceAligner
from diffusion.data import FaceEmbeddingDataset
from diffusion.generation import to_uint8
from embedding.backends import DlibBackend
from models.dcgan import generate_faces, load_dcgan_generator
from testbed.build import build_testbed, load_split
from testbed.faces import embed_faces, resize_images
from utils.config import compose
from utils.image_io import read_image

pytestmark = pytest.mark.usefixtures("one_thread")


def config(out: Path, n_train: int = 3, n_holdout: int = 1, holdout_start: int = 1000000):
    return compose("testbed_config", [
        "device=cpu", f"build.output_dir={out}", f"build.n_train={n_train}", f"build.n_holdout={n_holdout}",
        "build.chunk=4", f"build.holdout_seed_start={holdout_start}",
    ])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("testbed")
    return out, build_testbed(config(out))


def test_train_split_is_a_dataset_folder_with_matching_embeddings(built: tuple[Path, dict]) -> None:
    out, report = built
    train = load_split(out, "train")
    assert len(train) == 3 and report["train"]["n"] == 3
    seeds = [int(n) for n in train.names]
    assert seeds == sorted(seeds) and seeds[0] >= 0
    assert sorted(p.stem for p in (out / "train").glob("*.png")) == train.names  # no extra faces left behind
    assert set(report["train"]["no_face_seeds"]) == set(range(seeds[-1] + 1)) - set(seeds)
    np.testing.assert_allclose(np.linalg.norm(train.embeddings, axis=1), 1.0, atol=1e-5)
    dataset = FaceEmbeddingDataset(out / "train", out / "train_dlib.npz", image_size=32)  # what main.py reads
    assert len(dataset) == 3 and dataset.context_dim == 128
    # every stored 32x32 face re-embeds to its stored embedding; the faces are the DCGAN faces of their seeds
    faces = np.stack([read_image(out / "train" / f"{n}.png") for n in train.names])
    assert faces.shape == (3, 32, 32, 3)
    again = embed_faces(faces, FaceAligner(device="cpu", pad=0.2), DlibBackend(device="cpu"))
    assert again.detected.all()
    torch.testing.assert_close(torch.from_numpy(again.embeddings), torch.from_numpy(train.embeddings), atol=1e-5, rtol=0)
    generator = load_dcgan_generator(compose("testbed_config").build.dcgan_weights)
    drawn = resize_images(to_uint8(generate_faces(generator, seeds)), 32)
    assert np.abs(drawn.astype(int) - faces.astype(int)).max() <= 1  # same machine: identical up to rounding


def test_seeds_without_a_face_are_faceless_and_holdout_is_apart(built: tuple[Path, dict]) -> None:
    out, report = built
    missed = report["train"]["no_face_seeds"]
    if missed:
        generator = load_dcgan_generator(compose("testbed_config").build.dcgan_weights)
        faces = resize_images(to_uint8(generate_faces(generator, missed)), 32)
        assert not embed_faces(faces, FaceAligner(device="cpu", pad=0.2), DlibBackend(device="cpu")).detected.any()
    holdout = load_split(out, "holdout")
    assert len(holdout) == 1 and all(int(n) >= 1000000 for n in holdout.names)
    assert json.loads((out / "build_report.json").read_text())["fr_backend"] == "dlib"


def test_resume_and_growth_give_the_same_faces(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    first = load_split(out, "train")
    (out / "train_dlib.npz").unlink()
    (out / ".parts" / "train_0.npz").unlink()  # an interrupted chunk
    build_testbed(config(out))
    resumed = load_split(out, "train")
    assert resumed.names == first.names and np.allclose(resumed.embeddings, first.embeddings, atol=1e-5)
    build_testbed(config(out, n_train=5))  # a larger set keeps the first faces and adds the next seeds
    grown = load_split(out, "train")
    assert grown.names[:3] == first.names and len(grown) == 5
    assert sorted(p.stem for p in (out / "train").glob("*.png")) == grown.names
    build_testbed(config(out))  # and shrinks back
    assert load_split(out, "train").names == first.names


def test_bad_settings_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holdout_seed_start=2 must lie beyond the training seeds"):
        build_testbed(config(tmp_path, holdout_start=2))
    with pytest.raises(FileNotFoundError, match="build the testbed first"):
        load_split(tmp_path, "train")
