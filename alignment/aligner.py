"""Face detection (MTCNN, 5 landmarks) and similarity-transform alignment onto a template.

Two templates are known, both as (5, 2) ``(x, y)`` points in the order left eye, right eye,
nose tip, left mouth corner, right mouth corner (the order MTCNN returns):

* ``arcface``: the 112x112 ArcFace evaluation crop that ElasticFace and IDiff-Face use.
* ``dlib``: dlib's 150x150 face chip (``get_face_chip(img, shape, 150, 0.25)``), the input of
  the 128-d dlib ResNet descriptor: where dlib's own pipeline puts MTCNN's 5 points.

MTCNN comes from ``facenet-pytorch`` (its P/R/O-Net weights ship in the wheel). The
detector is built once per :class:`FaceAligner`; images of one size are detected as a batch.
With the defaults, detections and crops are those of the standard pipeline (facenet-pytorch
MTCNN on the image as given, a least-squares similarity onto insightface's template,
``cv2.warpAffine``) with which the verification sets were aligned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from skimage.transform import SimilarityTransform

from utils.config import resolve_device

log = logging.getLogger(__name__)

#: ArcFace 112x112 evaluation template: insightface's ``arcface_dst``
#: (``python-package/insightface/utils/face_align.py``), the 96x112 crop of SphereFace moved 8 px right.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
#: dlib's 150x150 chip (padding 0.25), the input of ``dlib_face_recognition_resnet_model_v1``:
#: the mean position of MTCNN's 5 points (this module's defaults) in the chip that dlib's own pipeline
#: (frontal face detector, ``shape_predictor_5_face_landmarks.dat``, ``get_face_chip(img, shape, 150,
#: 0.25)``) cuts from the same photo, over the 7 shipped real photos (data/demo/faces, scikit-image's
#: astronaut, matplotlib's Grace Hopper); per-photo spread 1.2 px (eyes) to 6.9 px (mouth corners).
#: Warping onto it gives descriptors with cosine 0.992-0.9995 to dlib's own on those photos.
DLIB_CHIP_TEMPLATE = np.array(
    [[48.1, 46.5], [102.6, 47.0], [76.5, 77.8], [49.6, 102.8], [101.8, 102.9]],
    dtype=np.float64,
)
#: name -> (points (5, 2), the side length in pixels those points refer to)
TEMPLATES: dict[str, tuple[np.ndarray, int]] = {
    "arcface": (ARCFACE_TEMPLATE, 112),
    "dlib": (DLIB_CHIP_TEMPLATE, 150),
}


def template_landmarks(template: str, size: int | None = None) -> np.ndarray:
    """The 5 template points (5, 2) scaled to a ``size`` x ``size`` output (native size when None)."""
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r} is unknown; expected one of {sorted(TEMPLATES)}")
    points, native = TEMPLATES[template]
    size = native if size is None else int(size)
    if size <= 0:
        raise ValueError(f"size must be a positive number of pixels, found {size}")
    return points * (size / native)


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, shift; Umeyama) mapping ``src`` onto ``dst``.

    Args:
        src: (K, 2) points ``(x, y)``, K >= 2.
        dst: (K, 2) target points.
    Returns:
        (2, 3) float64 affine matrix ``M`` with ``dst ~ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(
            f"landmarks must be two (K, 2) arrays of equal shape with K >= 2, found {src.shape} and {dst.shape}"
        )
    tform = SimilarityTransform.from_estimate(src, dst)
    if not tform:  # skimage returns a falsy FailedEstimation for degenerate points
        raise ValueError(f"no similarity transform fits the landmarks {src.round(1).tolist()} (degenerate points?)")
    return np.asarray(tform.params[:2], dtype=np.float64)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine ``matrix`` to (K, 2) points; returns (K, 2)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_to_template(
    image: np.ndarray, landmarks: np.ndarray, template: str = "arcface", size: int | None = None
) -> np.ndarray:
    """Warp ``image`` so that its 5 ``landmarks`` land on the template points.

    Args:
        image: (H, W, 3) image (any dtype cv2 warps, usually uint8 RGB).
        landmarks: (5, 2) ``(x, y)`` points in ``image`` (MTCNN order).
        template: ``"arcface"`` (112 px native) or ``"dlib"`` (150 px native).
        size: output side length; the template is scaled to it. Native size when None.
    Returns:
        (size, size, 3) crop of ``image``'s dtype; pixels outside the source are 0.
    """
    dst = template_landmarks(template, size)
    side = TEMPLATES[template][1] if size is None else int(size)
    matrix = similarity_matrix(np.asarray(landmarks, dtype=np.float64).reshape(-1, 2), dst)
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderValue=0.0)


@dataclass(frozen=True)
class Detection:
    """One detected face: ``box`` (4,) ``x1, y1, x2, y2``; ``prob`` the O-Net score; ``landmarks`` (5, 2) ``(x, y)``."""

    box: np.ndarray
    prob: float
    landmarks: np.ndarray


def select_central(
    boxes: np.ndarray, probs: np.ndarray, landmarks: np.ndarray, height: int, width: int
) -> Detection | None:
    """Pick the face whose box centre is nearest the image centre (the original's rule for generated samples).

    Args:
        boxes: (F, 4) ``x1, y1, x2, y2``; probs: (F,); landmarks: (F, 5, 2). F may be 0.
        height, width: image size in pixels.
    """
    if len(boxes) == 0:
        return None
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)  # (F, 2)
    offsets = centres - np.array([width / 2, height / 2])
    best = int(np.argmin((offsets**2).sum(axis=1)))
    return Detection(box=boxes[best].copy(), prob=float(probs[best]), landmarks=landmarks[best].copy())


def _as_float_array(value: object, shape: tuple[int, ...]) -> np.ndarray:
    """facenet-pytorch under numpy 2 returns ``dtype=object`` arrays or None per image: cast to float64 ``(F, *shape)``."""
    if value is None:
        return np.zeros((0, *shape), dtype=np.float64)
    return np.asarray(value, dtype=np.float64).reshape(-1, *shape)


def _check_image(index: int, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        found = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"images[{index}] must be an (H, W, 3) uint8 RGB array, found {found}")


class FaceAligner:
    """MTCNN detector plus template warp, built once and reused for many images.

    Args:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
        min_face_size: smallest face MTCNN looks for, in pixels. The image pyramid starts at
            scale ``12 / min_face_size``: the original's ``min_face_size=1`` scans a 128x128
            sample as a 1536x1536 image (measured on 2 CPU cores: 4.5 s instead of 0.8 s per
            128x128 photo, same landmarks within 0.6 px). Faces in generated 128x128 samples and
            112x112 crops are 60-110 px wide, so the default 20 (facenet-pytorch's own) loses nothing.
        thresholds: P-Net, R-Net, O-Net score thresholds.
        factor: pyramid scale step.
        batch_size: images of one size detected per MTCNN call (``align.batch_size``).
        pad: border added on every side before detection, as a fraction of the image's longer
            side, filled by repeating the edge pixels; boxes and landmarks are returned in the
            unpadded image's coordinates. 0 (default): MTCNN sees the image as given, as in the
            standard pipeline and the original. A border changes the landmarks MTCNN finds (0.03-2.9
            px on the 7 shipped real photos, more where the face box crosses the image edge) and
            has not been measured against an independent reference, so it is off by default.
    """

    def __init__(
        self,
        device: str | torch.device = "auto",
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        batch_size: int = 64,
        pad: float = 0.0,
    ) -> None:
        from facenet_pytorch import (
            MTCNN,  # heavy import, kept out of module import time
        )

        if min_face_size < 1:
            raise ValueError(f"min_face_size must be >= 1 pixel, found {min_face_size}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must hold 3 scores (P-Net, R-Net, O-Net), found {list(thresholds)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {batch_size}")
        if not 0.0 <= pad <= 1.0:
            raise ValueError(f"pad must be a fraction of the image side in [0, 1], found {pad}")
        self.pad = float(pad)
        self.min_face_size = int(min_face_size)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.batch_size = int(batch_size)
        self.mtcnn = MTCNN(
            min_face_size=int(min_face_size),
            thresholds=[float(t) for t in thresholds],
            factor=float(factor),
            keep_all=True,
            post_process=False,
            device=self.device,
        ).eval()

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detection | None]:
        """Detect the most central face in each image.

        Args:
            images: N (H, W, 3) uint8 RGB arrays; sizes may differ (each size is its own batch).
        Returns:
            N entries, a :class:`Detection` or None where no face was found.
        """
        for i, image in enumerate(images):
            _check_image(i, image)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        results: list[Detection | None] = [None] * len(images)
        for (height, width, _), indices in by_shape.items():
            border = int(round(self.pad * max(height, width)))
            if min(height, width) + 2 * border < self.min_face_size:
                continue  # smaller than the smallest face MTCNN looks for: its pyramid would be empty
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = np.stack([images[i] for i in chunk])  # (B, H, W, 3)
                if border:
                    batch = np.pad(batch, ((0, 0), (border, border), (border, border), (0, 0)), mode="edge")
                boxes, probs, points = self.mtcnn.detect(torch.from_numpy(batch).to(self.device), landmarks=True)
                for k, i in enumerate(chunk):
                    results[i] = select_central(
                        _as_float_array(boxes[k], (4,)) - border,
                        _as_float_array(probs[k], ()),
                        _as_float_array(points[k], (5, 2)) - border,
                        height,
                        width,
                    )
        missing = sum(r is None for r in results)
        if missing:
            log.debug("MTCNN found no face in %d of %d images", missing, len(images))
        return results

    def align(
        self, images: Sequence[np.ndarray], template: str = "arcface", size: int | None = None
    ) -> list[np.ndarray | None]:
        """Detect and warp each image onto ``template``; None where no face was found.

        Args:
            images: N (H, W, 3) uint8 RGB arrays.
            template: ``"arcface"`` or ``"dlib"``.
            size: output side length (template native size when None).
        Returns:
            N entries, each (size, size, 3) uint8 or None.
        """
        template_landmarks(template, size)  # validate before the (slow) detection
        return [
            None if det is None else warp_to_template(image, det.landmarks, template, size)
            for image, det in zip(images, self.detect(images))
        ]
