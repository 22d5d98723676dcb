"""alignment.aligner: template maths, central-face rule, MTCNN on real photos, equality with the standard pipeline."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from alignment.aligner import (
    ARCFACE_TEMPLATE,
    DLIB_CHIP_TEMPLATE,
    FaceAligner,
    select_central,
    similarity_matrix,
    template_landmarks,
    transform_points,
    warp_to_template,
)


def _rotation_scale(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), shift[0]], [scale * np.sin(a), scale * np.cos(a), shift[1]]]
    )


def test_similarity_matrix_recovers_a_known_transform() -> None:
    truth = _rotation_scale(17.0, 2.3, (40.0, -12.0))
    src = ARCFACE_TEMPLATE
    matrix = similarity_matrix(src, transform_points(truth, src))
    np.testing.assert_allclose(matrix, truth, atol=1e-9)


#: insightface's published 112x112 ArcFace points (``arcface_dst`` in python-package/insightface/utils/face_align.py)
INSIGHTFACE_ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def test_arcface_template_is_insightfaces() -> None:
    np.testing.assert_array_equal(ARCFACE_TEMPLATE, INSIGHTFACE_ARCFACE_DST)
    np.testing.assert_array_equal(template_landmarks("arcface"), INSIGHTFACE_ARCFACE_DST)
    np.testing.assert_allclose(template_landmarks("arcface", 224), 2 * INSIGHTFACE_ARCFACE_DST, rtol=1e-15)


def test_template_scaling_and_errors() -> None:
    np.testing.assert_allclose(template_landmarks("dlib", 300), DLIB_CHIP_TEMPLATE * 2)
    with pytest.raises(ValueError, match="template='vgg' is unknown"):
        template_landmarks("vgg")
    with pytest.raises(ValueError, match="degenerate"):
        similarity_matrix(np.ones((5, 2)), ARCFACE_TEMPLATE)


@pytest.mark.parametrize(("template", "size"), [("arcface", 112), ("dlib", 150), ("dlib", 200)])
def test_warp_puts_marked_landmarks_on_the_template(template: str, size: int) -> None:
    """Draw dots at landmark positions of a rotated, scaled face; after the warp they sit on the template."""
    face_to_image = _rotation_scale(-25.0, 336.0 / size, (150.0, 60.0))
    target = template_landmarks(template, size)
    landmarks = transform_points(face_to_image, target)
    image = np.zeros((480, 520, 3), dtype=np.uint8)
    for x, y in landmarks:
        image[int(round(y)) - 4 : int(round(y)) + 5, int(round(x)) - 4 : int(round(x)) + 5] = 255
    crop = warp_to_template(image, landmarks, template, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    for x, y in target:
        assert crop[int(round(y)), int(round(x))].min() > 200, (x, y)


def test_select_central_picks_the_face_nearest_the_centre() -> None:
    boxes = np.array([[0, 0, 40, 40], [50, 45, 90, 85], [100, 100, 128, 128]], dtype=float)
    probs = np.array([0.99, 0.9, 0.999])
    landmarks = np.arange(3 * 10, dtype=float).reshape(3, 5, 2)
    det = select_central(boxes, probs, landmarks, height=128, width=128)
    assert det is not None and det.prob == pytest.approx(0.9)
    np.testing.assert_array_equal(det.landmarks, landmarks[1])
    assert select_central(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)), 128, 128) is None


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner(device="cpu", min_face_size=40)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage.data import astronaut as load

    return load()


def test_rejects_images_that_are_not_uint8_rgb(aligner: FaceAligner) -> None:
    with pytest.raises(ValueError, match=r"images\[1\] must be an \(H, W, 3\) uint8 RGB array, found float32"):
        aligner.detect([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.float32)])


def test_batched_detection_mixed_sizes_and_no_face(aligner: FaceAligner, astronaut: np.ndarray) -> None:
    """One batch holds a face and a blank image (the numpy-2 object-array case); another size is its own batch."""
    blank = np.zeros_like(astronaut)
    small = np.full((96, 80, 3), 127, dtype=np.uint8)
    found = aligner.detect([astronaut, blank, small])
    assert found[1] is None and found[2] is None
    det = found[0]
    assert det is not None and det.prob > 0.99
    assert det.landmarks.shape == (5, 2) and det.landmarks.dtype == np.float64
    x1, y1, x2, y2 = det.box
    assert (x1 < det.landmarks[:, 0]).all() and (det.landmarks[:, 0] < x2).all()
    assert (y1 < det.landmarks[:, 1]).all() and (det.landmarks[:, 1] < y2).all()
    assert det.landmarks[0, 0] < det.landmarks[1, 0]  # left eye left of right eye in the image


@pytest.fixture(scope="module")
def default_aligner() -> FaceAligner:
    """The settings of ``align.py`` (min_face_size 20, pad 0)."""
    return FaceAligner(device="cpu")


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping (K, 2) ``src`` onto ``dst``, as a (2, 3) matrix."""
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    u, sv, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(sv) @ d) / (src_c**2).sum(axis=1).mean()
    return np.hstack([scale * rotation, (mu_dst - scale * rotation @ mu_src)[:, None]])


def test_default_crops_are_the_standard_mtcnn_arcface_crops(
    default_aligner: FaceAligner, real_photos: dict[str, np.ndarray]
) -> None:
    """The standard pipeline, written out: facenet-pytorch MTCNN (its defaults) on each raw photo, its first face,
    Umeyama onto insightface's points, cv2.warpAffine (bilinear, black border). Same landmarks within 0.01 px, same
    crops within 2 grey levels."""
    from facenet_pytorch import MTCNN

    standard = MTCNN(device="cpu")
    names = list(real_photos)
    ours = default_aligner.detect([real_photos[n] for n in names])  # batched by image size
    crops = default_aligner.align([real_photos[n] for n in names])
    for name, det, crop in zip(names, ours, crops):
        boxes, _, points = standard.detect(real_photos[name], landmarks=True)
        assert det is not None and len(boxes) == 1, name
        landmarks = np.asarray(points[0], dtype=np.float64)  # (5, 2)
        np.testing.assert_allclose(det.landmarks, landmarks, atol=0.01, err_msg=name)
        matrix = umeyama_similarity(landmarks, INSIGHTFACE_ARCFACE_DST)
        expected = cv2.warpAffine(real_photos[name], matrix, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0.0)
        assert crop is not None and np.abs(crop.astype(int) - expected).max() <= 2, name


def test_pad_reports_landmarks_in_the_unpadded_image(default_aligner: FaceAligner, astronaut: np.ndarray) -> None:
    """``pad`` (off by default) detects on an edge-repeated border and shifts the results back."""
    (plain,) = default_aligner.detect([astronaut])
    (padded,) = FaceAligner(device="cpu", pad=0.2).detect([astronaut])
    assert plain is not None and padded is not None
    assert np.linalg.norm(padded.landmarks - plain.landmarks, axis=1).max() < 3.0
    assert np.abs(padded.box - plain.box).max() < 5.0
    with pytest.raises(ValueError, match=r"pad must be a fraction of the image side in \[0, 1\], found 1.5"):
        FaceAligner(device="cpu", pad=1.5)


@pytest.fixture(scope="module")
def hopper(real_photos: dict[str, np.ndarray]) -> np.ndarray:
    """Grace Hopper's US Navy portrait (public domain), shipped in matplotlib's sample data; (600, 512, 3)."""
    return real_photos["grace_hopper"]


def redetect_aligned(aligner: FaceAligner, photo: np.ndarray, redetector: FaceAligner) -> tuple[np.ndarray, np.ndarray]:
    """Align ``photo`` to the 112x112 ArcFace crop, re-detect the crop: (warped detections, re-detections), (5, 2) each."""
    (det,) = aligner.detect([photo])
    assert det is not None
    warped = transform_points(similarity_matrix(det.landmarks, ARCFACE_TEMPLATE), det.landmarks)
    (redetected,) = redetector.detect([warp_to_template(photo, det.landmarks, "arcface")])
    assert redetected is not None
    return warped, redetected.landmarks


def test_hopper_landmarks_fit_the_arcface_template(default_aligner: FaceAligner, hopper: np.ndarray) -> None:
    """Grace Hopper's frontal portrait: after the least-squares similarity her 5 points lie within 3 px of the template
    (a similarity has 4 degrees of freedom for 10 coordinates; a frontal, neutral face leaves a small residual)."""
    (det,) = default_aligner.detect([hopper])
    assert det is not None and det.prob > 0.99
    warped = transform_points(similarity_matrix(det.landmarks, ARCFACE_TEMPLATE), det.landmarks)
    assert np.linalg.norm(warped - ARCFACE_TEMPLATE, axis=1).max() < 3.0


def test_aligned_astronaut_crop_landmarks_redetect_where_warped(
    default_aligner: FaceAligner, astronaut: np.ndarray
) -> None:
    """MTCNN re-detects the 5 points of the aligned astronaut crop within 3 px of where the warp put them.

    A similarity transform has 4 degrees of freedom for 10 coordinates, so the warped points of a
    real face do not all sit on the template: for the (smiling) astronaut the least-squares residual
    of nose and mouth corners is 5-7 px, and any re-detection reports that residual.
    """
    warped, redetected = redetect_aligned(default_aligner, astronaut, default_aligner)
    assert np.linalg.norm(warped - ARCFACE_TEMPLATE, axis=1).max() > 5.0
    assert np.linalg.norm(redetected - warped, axis=1).max() < 3.0


@pytest.mark.gpu
def test_cuda_detection_matches_cpu(aligner: FaceAligner, astronaut: np.ndarray) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    (on_cpu,) = aligner.detect([astronaut])
    (on_gpu,) = FaceAligner(device="cuda", min_face_size=40).detect([astronaut])
    assert on_cpu is not None and on_gpu is not None
    np.testing.assert_allclose(on_gpu.landmarks, on_cpu.landmarks, atol=1.0)
