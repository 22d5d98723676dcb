"""embedding.backends: the shared interface, iResNet preprocessing, dlib on real photos."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignment.aligner import DLIB_CHIP_TEMPLATE, Detection, FaceAligner, transform_points, warp_to_template
from embedding.backends import (
    DLIB_DESCRIPTOR_FILE,
    DlibBackend,
    IResNetBackend,
    backend_settings,
    build_backend,
    dlib_models_dir,
)
from models.iresnet import iresnet18
from utils.config import compose

log = logging.getLogger(__name__)

@pytest.fixture(scope="module")
def iresnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("iresnet") / "r18.pth"
    torch.save(iresnet18(num_features=512).state_dict(), path)
    return path


def test_iresnet_backend_matches_the_preprocessing_written_out(iresnet_weights: Path) -> None:
    """embed = F.normalize(net(x / 127.5 - 1)) on 112x112 RGB (bilinear resize first for other sizes), any batching."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(5)]
    net = iresnet18(num_features=512).eval()
    net.load_state_dict(torch.load(iresnet_weights, weights_only=True))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (5, 3, 112, 112)
    with torch.no_grad():
        expected = F.normalize(net(x)).numpy()
        expected_flip = F.normalize(net(x) + net(torch.flip(x, dims=[3]))).numpy()
    backend = IResNetBackend(iresnet_weights, arch="iresnet18", device="cpu", batch_size=2)
    emb = backend.embed(images)
    assert emb.shape == (5, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    np.testing.assert_allclose(backend.embed(images, flip=True), expected_flip, atol=1e-5)
    large = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(2)]
    x = torch.from_numpy(np.stack(large)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    x = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False)
    with torch.no_grad():
        np.testing.assert_allclose(backend.embed(large), F.normalize(net(x)).numpy(), atol=1e-5)
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


def _person(name: str) -> str:
    """Who a real photo shows (``obama_2`` -> obama; the astronaut is Eileen Collins)."""
    return {"astronaut": "collins", "grace_hopper": "hopper"}.get(name, name.split("_")[0])


def _genuine_impostor(names: list[str], emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    person = np.array([_person(n) for n in names])
    sims = emb @ emb.T
    iu = np.triu_indices(len(names), k=1)
    same = person[iu[0]] == person[iu[1]]
    return sims[iu][same], sims[iu][~same]


@pytest.fixture(scope="module")
def detections(real_photos: dict[str, np.ndarray]) -> dict[str, Detection]:
    """MTCNN's central face in every real photo, with the default (standard) settings."""
    found = FaceAligner(device="cpu").detect(list(real_photos.values()))
    assert all(d is not None for d in found)
    return dict(zip(real_photos, found))


@pytest.fixture(scope="module")
def photo_embeddings(real_photos: dict[str, np.ndarray]) -> np.ndarray:
    """(7, 128) dlib descriptors of the real photos through ``DlibBackend(input="photo")`` (MTCNN + chip template)."""
    return DlibBackend(input="photo", device="cpu").embed(list(real_photos.values()))


def test_dlib_genuine_above_every_impostor(
    real_photos: dict[str, np.ndarray], detections: dict[str, Detection], photo_embeddings: np.ndarray
) -> None:
    """The three Obama photos score closer to each other (and Collins to Collins) than any two different people.

    ``photo`` input: MTCNN landmarks -> dlib chip. ``arcface_crop`` input: the 112x112 ArcFace crop
    (what align.py writes) -> chip by the template-to-template warp, no second detection; with and
    without the flip-sum.
    """
    names = list(real_photos)
    crops = [warp_to_template(real_photos[n], detections[n].landmarks, "arcface", 112) for n in names]
    backend = DlibBackend(input="arcface_crop")
    for kind, emb in [("photo", photo_embeddings), ("arcface_crop", backend.embed(crops)),
                      ("arcface_crop flip-sum", backend.embed(crops, flip=True))]:
        assert emb.shape == (len(names), 128)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        genuine, impostor = _genuine_impostor(names, emb)
        log.info("dlib %s: genuine cos %s, impostor cos %s", kind, genuine.round(3), impostor.round(3))
        assert len(genuine) == 4 and len(impostor) == 17
        assert genuine.min() > impostor.max(), (kind, genuine.round(3), impostor.round(3))


def _image_to_chip(details) -> np.ndarray:
    """(2, 3) affine from image to chip pixels of a ``dlib.chip_details``: dlib's own definition (its
    ``get_mapping_to_chip``): the rect's corners, rotated by ``angle`` about the rect's centre, go to the chip's
    corners (0, 0), (cols - 1, 0), (cols - 1, rows - 1)."""
    r = details.rect
    centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    c, s = np.cos(details.angle), np.sin(details.angle)
    corners = [(r.left(), r.top()), (r.right(), r.top()), (r.right(), r.bottom())]
    src = [np.array([[c, -s], [s, c]]) @ (np.array(p) - centre) + centre for p in corners]
    dst = [(0, 0), (details.cols - 1, 0), (details.cols - 1, details.rows - 1)]
    return np.linalg.solve(np.array([[x, y, 1.0] for x, y in src]), np.array(dst, dtype=np.float64)).T


@pytest.fixture(scope="module")
def dlib_pipeline(real_photos: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Per photo, dlib's own pipeline: (chip_details, descriptor (128,)) from its frontal face detector (image
    upsampled once), the 5-point shape predictor and ``get_face_chip(img, shape, 150, 0.25)``."""
    import dlib

    models = dlib_models_dir()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    net = dlib.face_recognition_model_v1(str(models / DLIB_DESCRIPTOR_FILE))
    out = {}
    for name, photo in real_photos.items():
        faces = detector(photo, 1)
        assert len(faces) >= 1, f"dlib finds no face in {name}"
        shape = predictor(photo, max(faces, key=lambda face: face.area()))
        chip = dlib.get_face_chip(photo, shape, 150, 0.25)
        out[name] = (dlib.get_face_chip_details(shape, 150, 0.25), np.asarray(net.compute_face_descriptor(chip)))
    return out


def test_dlib_chip_template_is_where_dlibs_pipeline_puts_mtcnns_points(
    real_photos: dict[str, np.ndarray], dlib_pipeline: dict[str, tuple], detections: dict[str, Detection]
) -> None:
    """DLIB_CHIP_TEMPLATE = the mean of MTCNN's points mapped into dlib's own chips of the 7 real photos (0.1 px)."""
    import dlib

    mapped = []
    for name, photo in real_photos.items():
        details, _ = dlib_pipeline[name]
        # the mapping is dlib's: chipping the coordinate ramps of the photo returns them unchanged
        h, w = photo.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        chip_xy = np.stack([dlib.extract_image_chip(xs, details), dlib.extract_image_chip(ys, details)], axis=-1)
        v, u = np.mgrid[0:150, 0:150]
        to_image = np.linalg.inv(np.vstack([_image_to_chip(details), [0, 0, 1]]))[:2]
        np.testing.assert_allclose(chip_xy[5:-5, 5:-5], (np.stack([u, v, np.ones_like(u)], -1) @ to_image.T)[5:-5, 5:-5],
                                   atol=1e-3)
        mapped.append(transform_points(_image_to_chip(details), detections[name].landmarks))
    np.testing.assert_allclose(np.mean(mapped, axis=0), DLIB_CHIP_TEMPLATE, atol=0.06)


def test_dlib_descriptors_match_dlibs_own_pipeline(
    real_photos: dict[str, np.ndarray], dlib_pipeline: dict[str, tuple], photo_embeddings: np.ndarray
) -> None:
    """Acceptance: on every shipped real photo our descriptor (MTCNN + chip template) has cosine >= 0.99 to dlib's."""
    cosines = {}
    for name, emb in zip(real_photos, photo_embeddings):
        reference = dlib_pipeline[name][1]
        cosines[name] = float(emb @ reference / np.linalg.norm(reference))
    log.info("cosine to dlib's own descriptors: %s", {k: round(v, 4) for k, v in cosines.items()})
    assert min(cosines.values()) >= 0.99, cosines


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
