"""embedding.backends: the shared interface, iResNet preprocessing, dlib on real photos."""

from __future__ import annotations

import logging
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from alignment.aligner import FaceAligner
from embedding.backends import (
    DlibBackend,
    IResNetBackend,
    backend_settings,
    build_backend,
)
from models.iresnet import iresnet18
from utils.config import compose

log = logging.getLogger(__name__)

PHOTOS = {"obama": "obama.jpg", "obama2": "obama2.jpg", "obama3": "obama3.jpg", "biden": "biden.jpg"}


@pytest.fixture(scope="module")
def iresnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("iresnet") / "r18.pth"
    torch.save(iresnet18(num_features=512).state_dict(), path)
    return path


def test_iresnet_backend_unit_norm_batching_resize_and_flip(iresnet_weights: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(5)]
    backend = IResNetBackend(iresnet_weights, arch="iresnet18", device="cpu", batch_size=2)
    emb = backend.embed(images)
    assert emb.shape == (5, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    whole = IResNetBackend(iresnet_weights, arch="iresnet18", device="cpu", batch_size=5).embed(images)
    np.testing.assert_allclose(emb, whole, atol=1e-5)
    # flip-sum: the normalised sum of the embeddings of the image and its mirror
    x = backend._prepare(images[:1])
    raw = backend._features(x, flip=False) + backend._features(torch.flip(x, dims=[3]), flip=False)
    np.testing.assert_allclose(backend.embed(images[:1], flip=True)[0], raw[0] / np.linalg.norm(raw[0]), atol=1e-5)
    with pytest.raises(ValueError, match=r"images\[0\] must be an \(H, W, 3\) uint8 RGB array"):
        backend.embed([np.zeros((112, 112), np.uint8)])


def test_build_backend_errors(iresnet_weights: Path) -> None:
    backend = build_backend({"name": "iresnet", "weights": str(iresnet_weights), "arch": "iresnet18"}, device="cpu")
    assert isinstance(backend, IResNetBackend) and backend.embedding_dim == 512
    with pytest.raises(ValueError, match="fr_backend.name='facenet' is unknown"):
        build_backend({"name": "facenet"})
    with pytest.raises(ValueError, match="unexpected key"):
        build_backend({"name": "dlib", "weights": "x"}, device="cpu")


def test_backend_settings_from_the_config_group(iresnet_weights: Path) -> None:
    """configs/fr_backend/default.yaml: the named section is used, the other one ignored."""
    cfg = compose("encode_config", ["fr_backend.name=iresnet", f"fr_backend.iresnet.weights={iresnet_weights}",
                                    "fr_backend.iresnet.arch=iresnet18", "fr_backend.batch_size=4"])
    assert backend_settings(cfg.fr_backend) == {"name": "iresnet", "batch_size": 4, "weights": str(iresnet_weights),
                                                "arch": "iresnet18", "num_features": 512}
    backend = build_backend(cfg.fr_backend, device="cpu")
    assert isinstance(backend, IResNetBackend) and backend.batch_size == 4
    dlib = compose("contexts_config", ["contexts.fr_backend.name=dlib", "contexts.fr_backend.dlib.input=photo"])
    assert backend_settings(dlib.contexts.fr_backend) == {"name": "dlib", "batch_size": 64, "input": "photo",
                                                          "min_face_size": 20}


@pytest.fixture(scope="session")
def face_photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Obama (3 photos) and Biden from the face_recognition 1.3.0 sdist, plus skimage's astronaut.

    Photos are shrunk to a longest side of 500 px so that MTCNN stays fast on the CPU.
    """
    from PIL import Image
    from skimage.data import astronaut

    folder = tmp_path_factory.mktemp("face_recognition_sdist")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "face-recognition==1.3.0",
        "-d",
        str(folder),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    archives = list(folder.glob("face_recognition-1.3.0.tar.gz"))
    if result.returncode != 0 or not archives:
        pytest.skip(
            f"cannot download the face_recognition 1.3.0 source distribution (its test photos): {result.stderr.strip()[-300:]}"
        )
    photos = {"astronaut": astronaut()}
    with tarfile.open(archives[0]) as tar:
        for key, name in PHOTOS.items():
            member = tar.extractfile(f"face_recognition-1.3.0/tests/test_images/{name}")
            assert member is not None, name
            image = Image.open(member).convert("RGB")
            image.thumbnail((500, 500))
            photos[key] = np.asarray(image)
    return photos


def _genuine_impostor(names: list[str], emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    person = np.array([n.rstrip("0123456789") for n in names])
    sims = emb @ emb.T
    iu = np.triu_indices(len(names), k=1)
    same = person[iu[0]] == person[iu[1]]
    return sims[iu][same], sims[iu][~same]


@pytest.mark.parametrize("input_kind", ["photo", "arcface_crop"])
def test_dlib_genuine_above_every_impostor(face_photos: dict[str, np.ndarray], input_kind: str) -> None:
    """Acceptance: three Obama photos score closer to each other than to Biden or the astronaut.

    ``photo``: MTCNN landmarks -> dlib chip. ``arcface_crop``: the 112x112 ArcFace crop
    (what align.py writes) -> chip by the template-to-template warp, no second detection.
    """
    names = list(face_photos)
    images = [face_photos[n] for n in names]
    if input_kind == "arcface_crop":
        images = FaceAligner(device="cpu", min_face_size=40).align(images, template="arcface", size=112)
        assert all(crop is not None for crop in images)
    backend = DlibBackend(input=input_kind, device="cpu", min_face_size=40)
    emb = backend.embed(images)
    assert emb.shape == (len(names), 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    genuine, impostor = _genuine_impostor(names, emb)
    log.info("dlib %s: genuine cos %s, impostor cos %s", input_kind, genuine.round(3), impostor.round(3))
    assert len(genuine) == 3 and len(impostor) == 7
    assert genuine.min() > impostor.max(), (genuine.round(3), impostor.round(3))
    flipped = backend.embed(images, flip=True)
    genuine_f, impostor_f = _genuine_impostor(names, flipped)
    assert genuine_f.min() > impostor_f.max()


def test_dlib_rejects_non_square_crops_and_photos_without_faces() -> None:
    backend = DlibBackend(input="arcface_crop")
    with pytest.raises(ValueError, match="must be square, found 112x96"):
        backend.embed([np.zeros((112, 96, 3), np.uint8)])
    with pytest.raises(ValueError, match="no face in images \\[0\\]"):
        DlibBackend(input="photo", device="cpu").embed([np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(ValueError, match="input='raw' is unknown"):
        DlibBackend(input="raw")


@pytest.mark.gpu
def test_iresnet_backend_cuda_matches_cpu(iresnet_weights: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    images = [np.random.default_rng(k).integers(0, 256, (112, 112, 3), dtype=np.uint8) for k in range(4)]
    on_cpu = IResNetBackend(iresnet_weights, arch="iresnet18", device="cpu").embed(images)
    on_gpu = IResNetBackend(iresnet_weights, arch="iresnet18", device="cuda").embed(images)
    np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-3)
