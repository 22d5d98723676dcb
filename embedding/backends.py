"""Face-recognition backends behind one interface: RGB images in, L2-normalised embeddings out.

* :class:`IResNetBackend`: an iResNet checkpoint (ElasticFace-Arc iResNet-100 by default,
  as IDiff-Face uses) on 112x112 ArcFace crops, RGB scaled to [-1, 1]; 512-d.
* :class:`DlibBackend`: dlib's ResNet face descriptor (128-d) from the PyPI packages
  ``dlib-bin`` + ``face_recognition_models``; works offline, for demos and tests. It needs
  dlib's own 150x150 chip, built by warping the 5 landmarks onto dlib's chip template
  (``alignment.aligner.DLIB_CHIP_TEMPLATE``, fitted to dlib's own pipeline: cosine >= 0.99 to
  dlib's descriptors of the same photo): for ArcFace crops the landmarks are the ArcFace
  template (no detection), for raw photos MTCNN finds them (standard settings, no border).

Embeddings are returned unit-length, so cosine similarity is a dot product and is a
monotone function of the L2 distance between the unit vectors (``cos = 1 - d^2 / 2``).
Raw dlib descriptors have norm ~1.4 and are not centred, so cosines of different people
stay high (~0.8); thresholds in ``evaluate`` must be chosen per backend (dlib ~0.9,
which matches dlib's own L2 threshold 0.6 on raw descriptors).
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from alignment.aligner import ARCFACE_TEMPLATE, FaceAligner, warp_to_template
from utils.config import resolve_device

DLIB_DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            found = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"images[{i}] must be an (H, W, 3) uint8 RGB array, found {found}")


class FaceEmbedder(ABC):
    """Common interface. Subclasses set ``embedding_dim`` and implement ``_prepare``/``_features``.

    Args:
        batch_size: images per forward pass.
    """

    embedding_dim: int

    def __init__(self, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {batch_size}")
        self.batch_size = int(batch_size)

    @abstractmethod
    def _prepare(self, images: Sequence[np.ndarray]) -> Any:
        """Turn B checked images into the network input."""

    @abstractmethod
    def _features(self, batch: Any, flip: bool) -> np.ndarray:
        """(B, D) float32 un-normalised features of ``batch`` (mirrored left-right when ``flip``)."""

    def embed(self, images: Sequence[np.ndarray], flip: bool = False) -> np.ndarray:
        """Embed images.

        Args:
            images: N (H, W, 3) uint8 RGB arrays (what each backend expects: see its class).
            flip: add the features of the mirrored image before normalising (flip-sum TTA).
        Returns:
            (N, embedding_dim) float32, each row of unit L2 norm.
        """
        _check_images(images)
        out = np.empty((len(images), self.embedding_dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = self._prepare(images[start : start + self.batch_size])
            features = self._features(batch, flip=False)
            if flip:
                features = features + self._features(batch, flip=True)
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            out[start : start + len(features)] = features / np.maximum(norms, 1e-12)
        return out


class IResNetBackend(FaceEmbedder):
    """iResNet on aligned crops: RGB -> [-1, 1] -> bilinear resize to 112x112 (if needed) -> net -> L2 norm.

    Args:
        weights: state-dict file (``paths.elasticface`` for ElasticFace-Arc iResNet-100).
        arch: ``iresnet18`` / ``34`` / ``50`` / ``100`` / ``200``.
        num_features: embedding size of the checkpoint.
        device: ``auto``, ``cpu``, ``cuda``, ...
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        arch: str = "iresnet100",
        num_features: int = 512,
        device: str | torch.device = "auto",
        batch_size: int = 64,
    ) -> None:
        from models.iresnet import load_iresnet

        super().__init__(batch_size)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = load_iresnet(weights, arch=arch, num_features=num_features, map_location=self.device).eval()
        self.embedding_dim = int(num_features)

    def _prepare(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise ValueError(f"IResNetBackend needs images of one size per batch, found sizes {sorted(shapes)}")
        x = torch.from_numpy(np.stack(images)).to(self.device)  # (B, H, W, 3) uint8
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        if x.shape[-2:] != (112, 112):
            x = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def _features(self, batch: torch.Tensor, flip: bool) -> np.ndarray:
        x = torch.flip(batch, dims=[3]) if flip else batch
        return self.model(x).float().cpu().numpy()  # (B, num_features)


def dlib_models_dir() -> Path:
    """Folder with the ``.dat`` files of ``face_recognition_models``, found without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package face_recognition_models is not installed (it holds dlib's model files); "
            "install it with `pip install dlib-bin face_recognition_models`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibBackend(FaceEmbedder):
    """dlib ResNet descriptor (128-d) on 150x150 chips warped onto dlib's chip template.

    Args:
        input: ``"arcface_crop"``: images are ArcFace-aligned crops (any square size, e.g. the
            112x112 output of ``align.py``); their landmarks are the ArcFace template, so the
            chip is one warp, no detection. ``"photo"``: unaligned photos; MTCNN finds the
            central face, whose landmarks are warped onto the chip template.
        model_file: descriptor ``.dat``; found in ``face_recognition_models`` when None.
        device: device of MTCNN (``photo`` input only); dlib itself runs on the CPU.
        min_face_size: MTCNN's smallest face in pixels (``photo`` input only).
        batch_size: images per descriptor call.
    """

    embedding_dim = 128

    def __init__(
        self,
        input: str = "arcface_crop",
        model_file: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        min_face_size: int = 20,
        batch_size: int = 64,
    ) -> None:
        import dlib

        super().__init__(batch_size)
        if input not in ("arcface_crop", "photo"):
            raise ValueError(f"DlibBackend input={input!r} is unknown; expected 'arcface_crop' or 'photo'")
        path = Path(model_file) if model_file is not None else dlib_models_dir() / DLIB_DESCRIPTOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"dlib descriptor model {path} does not exist (from face_recognition_models)")
        self.input = input
        self.net = dlib.face_recognition_model_v1(str(path))
        self.aligner = FaceAligner(device=device, min_face_size=min_face_size) if input == "photo" else None

    def chips(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The 150x150x3 uint8 dlib chips of ``images`` (raises if a ``photo`` shows no face)."""
        _check_images(images)
        if self.aligner is None:
            return [self._crop_to_chip(image) for image in images]
        chips = self.aligner.align(images, template="dlib", size=150)
        missing = [i for i, chip in enumerate(chips) if chip is None]
        if missing:
            raise ValueError(
                f"MTCNN found no face in images {missing[:10]} (of {len(images)}); DlibBackend needs one face per photo"
            )
        return chips  # type: ignore[return-value]

    @staticmethod
    def _crop_to_chip(crop: np.ndarray) -> np.ndarray:
        height, width = crop.shape[:2]
        if height != width:
            raise ValueError(
                f"an ArcFace crop must be square, found {height}x{width}; use input='photo' for raw photos"
            )
        landmarks = ARCFACE_TEMPLATE * (width / 112)  # (5, 2): where the template put the points
        return warp_to_template(crop, landmarks, "dlib", 150)

    def _prepare(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.chips(images)

    def _features(self, batch: list[np.ndarray], flip: bool) -> np.ndarray:
        chips = [np.ascontiguousarray(chip[:, ::-1]) for chip in batch] if flip else batch
        return np.asarray(self.net.compute_face_descriptor(chips), dtype=np.float32).reshape(len(chips), 128)


BACKENDS: dict[str, type[FaceEmbedder]] = {"iresnet": IResNetBackend, "dlib": DlibBackend}


def backend_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``{name, **constructor arguments}`` of the chosen backend from a flat or a sectioned mapping.

    Flat: ``{"name": "dlib", "input": "photo"}``. Sectioned (``configs/fr_backend/default.yaml``):
    ``{"name": "dlib", "batch_size": 64, "iresnet": {...}, "dlib": {"input": "photo"}}``: the
    section of ``name`` is merged in and the other sections are dropped.
    """
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    name = cfg.get("name")
    if name not in BACKENDS:
        raise ValueError(f"fr_backend.name={name!r} is unknown; expected one of {sorted(BACKENDS)}")
    section = cfg.get(name) or {}
    return {**{k: v for k, v in cfg.items() if k not in BACKENDS}, **section}


def build_backend(cfg: Mapping[str, Any], device: str | torch.device = "auto") -> FaceEmbedder:
    """Build a backend from a flat or sectioned config mapping (see :func:`backend_settings`).

    Example: ``{"name": "iresnet", "weights": "weights/Elastic_R100_295672backbone.pth",
    "arch": "iresnet100", "batch_size": 64}`` or ``{"name": "dlib", "input": "arcface_crop"}``.
    ``device`` comes from the script's top-level ``device`` setting.
    """
    kwargs = backend_settings(cfg)
    name = kwargs.pop("name")
    try:
        return BACKENDS[name](**kwargs, device=device)
    except TypeError as err:
        raise ValueError(f"fr config for {name!r} has an unexpected key ({err}); given keys {sorted(kwargs)}") from None
