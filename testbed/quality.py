"""Run generation settings on one trained model and measure the identity quality of its novel identities.

For each :class:`testbed.settings.Setting`: M contexts -> M x K images (``sample_identities``, image k of
identity ``name`` seeded by ``image_seed(seed, name, k)``) -> enlarge, MTCNN, ArcFace crop, FR
embedding (:func:`testbed.faces.embed_faces`) -> :func:`testbed.metrics.identity_quality` plus
seconds per image and pixel diversity; with held-out contexts also the source match. Each finished
setting is stored as ``<output_dir>/settings/<name>.json`` + ``.npz`` (written atomically) with a
fingerprint of everything it depends on, so an interrupted run resumes with the next setting and a
changed setting is redone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from alignment.aligner import FaceAligner
from diffusion.generation import TrainedModel, image_seed, sample_identities
from diffusion.guidance import negative_contexts
from diffusion.sampling_settings import SamplerSettings
from embedding.backends import FaceEmbedder
from evaluation.identity import nearest_similarity
from testbed.faces import embed_faces
from testbed.metrics import identity_quality, mean_pairwise_distance, source_match
from testbed.settings import Setting, setting_contexts
from utils.atomic import write_atomic, write_json_atomic
from utils.image_io import read_image

log = logging.getLogger(__name__)


@dataclass
class QualityRun:
    """What every setting of one benchmark run shares.

    Args:
        model: the trained diffusion model.
        aligner, backend: MTCNN + warp and the FR model that score the samples.
        train_embeddings: (R, D) unit embeddings of the model's training faces in the backend's space, or None.
        train_contexts: (R, D') the contexts the model was trained on (distance of novel contexts to them), or None.
        holdout_images: folder of the held-out faces (``<stem>.png``) for the pixel source match, or None.
        n_identities, images_per_identity: M and K.
        seed: seed of the contexts and of the images.
        upscale_to: side the samples are enlarged to before MTCNN.
        output_dir: where ``settings/<name>.{json,npz}`` go.
        fingerprint: what the results depend on besides the setting (model file, sizes, backend).
    """

    model: TrainedModel
    aligner: FaceAligner
    backend: FaceEmbedder
    train_embeddings: np.ndarray | None
    train_contexts: np.ndarray | None
    holdout_images: Path | None
    n_identities: int
    images_per_identity: int
    seed: int
    upscale_to: int
    output_dir: Path
    fingerprint: dict


def sample_setting(model: TrainedModel, sampling: DictConfig, names: list[str], contexts: np.ndarray,
                   images_per_identity: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """K images per context with ``sample.py``'s sampling settings, in packed batches of ``sampling.batch_size``.

    Args:
        sampling: merged ``sampling`` config (sampler, steps, guidance, negative, amp, micro_batch, ...).
        names: M identity names (they seed the images); contexts: (M, D).
    Returns:
        images (M*K, H, W, 3) uint8 identity-major, labels (M*K,) in 0..M-1, and the seconds spent sampling
        (choosing negative contexts included).
    """
    settings = SamplerSettings.from_config(sampling)
    contexts = np.asarray(contexts, dtype=np.float32)
    rows = list(range(len(names)))
    start = time.perf_counter()
    negatives = (negative_contexts(settings.negative, names, contexts, rows, model.diffusion.betas.device)
                 if settings.negative.active else None)
    blocks = [images for _, images in sample_identities(
        model, contexts, rows, lambda row, k: image_seed(seed, names[row], k), images_per_identity, settings,
        int(sampling.batch_size), negatives, desc="quality")]
    seconds = time.perf_counter() - start
    return np.concatenate(blocks), np.repeat(np.arange(len(names), dtype=np.int64), images_per_identity), seconds


def _fingerprint(run: QualityRun, setting: Setting) -> str:
    text = json.dumps({"run": run.fingerprint, "sampling": OmegaConf.to_container(setting.sampling, resolve=True),
                       "contexts": OmegaConf.to_container(setting.contexts, resolve=True)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_setting_result(run: QualityRun, setting: Setting) -> tuple[dict, np.ndarray] | None:
    """The stored metrics and images of a finished setting with the same fingerprint, else None."""
    json_path = run.output_dir / "settings" / f"{setting.name}.json"
    npz_path = json_path.with_suffix(".npz")
    if not (json_path.is_file() and npz_path.is_file()):
        return None
    result = json.loads(json_path.read_text())
    if result.get("fingerprint") != _fingerprint(run, setting):
        log.info("%s: stored result has another fingerprint; running it again", setting.name)
        return None
    with np.load(npz_path, allow_pickle=False) as data:
        return result, data["images"]


def run_setting(run: QualityRun, setting: Setting) -> tuple[dict, np.ndarray]:
    """Sample, embed and score one setting (or load its stored result); returns metrics and images (M*K, H, W, 3)."""
    stored = load_setting_result(run, setting)
    if stored is not None:
        log.info("%s: loaded the stored result", setting.name)
        return stored
    m, k = run.n_identities, run.images_per_identity
    contexts = setting_contexts(setting, m, run.model.context_dim, run.seed)
    log.info("%s: sampling %d identities x %d images", setting.name, m, k)
    images, labels, seconds = sample_setting(run.model, setting.sampling, contexts.names, contexts.embeddings, k, run.seed)
    faces = embed_faces(images, run.aligner, run.backend, run.upscale_to)
    result: dict = {"setting": setting.name, "n_identities": m, "images_per_identity": k,
                    "detected_share": faces.detected_share, "s_per_image": seconds / len(images)}
    detected = labels[faces.detected]
    if len(np.unique(detected)) >= 2 and (np.bincount(detected) >= 2).any():
        result.update(identity_quality(faces.embeddings, detected, m, run.train_embeddings))
    else:
        log.warning("%s: too few detected faces for genuine and impostor pairs; no identity metrics", setting.name)
    pixels = images.reshape(len(images), -1).astype(np.float64) / 255.0
    result["pixel_diversity"] = mean_pairwise_distance(pixels, labels, rms=True)
    if setting.contexts.source == "holdout" and len(detected):
        result.update(_source_match(run, contexts.names, faces.embeddings, detected, pixels, labels))
    if run.train_contexts is not None:
        nearest, _ = nearest_similarity(contexts.embeddings, run.train_contexts.astype(np.float32))
        result["context_nearest_train_cos_mean"] = float(nearest.mean())  # how far the contexts are from training faces
    result["contexts"] = contexts.names[: min(m, 8)]
    result["fingerprint"] = _fingerprint(run, setting)
    arrays = {"images": images, "labels": labels, "detected": faces.detected, "embeddings": faces.embeddings,
              "contexts": contexts.embeddings}
    write_atomic(run.output_dir / "settings" / f"{setting.name}.npz", lambda f: np.savez_compressed(f, **arrays))
    write_json_atomic(run.output_dir / "settings" / f"{setting.name}.json", result)
    log.info("%s: EER %.3f, identity match %.3f, detected %.3f, %.3f s/image", setting.name,
             result.get("eer", float("nan")), result.get("identity_match", float("nan")), result["detected_share"],
             result["s_per_image"])
    return result, images


def _source_match(run: QualityRun, names: list[str], embeddings: np.ndarray, detected_labels: np.ndarray,
                  pixels: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out check on held-out contexts: is each image nearest its own source face, by FR and by pixels?

    The FR match compares with the sources embedded by the same pipeline; the pixel match (L2 over the
    images in [0, 1], no FR model involved) is the check independent of the FR model.
    """
    if run.holdout_images is None:
        return {}
    stems = [name.split("_", 1)[1] for name in names]
    sources = np.stack([read_image(run.holdout_images / f"{stem}.png") for stem in stems])  # (M, S, S, 3)
    if sources.shape[1:] != (int(np.sqrt(pixels.shape[1] // 3)),) * 2 + (3,):
        raise ValueError(f"held-out faces in {run.holdout_images} are {sources.shape[1:]}, the samples are not")
    source_faces = embed_faces(sources, run.aligner, run.backend, run.upscale_to)
    out = {"source_match_pixels": source_match(pixels, labels, sources.reshape(len(sources), -1) / 255.0, "l2"),
           "source_match_chance": 1.0 / len(names)}
    if source_faces.detected.all():
        out["source_match_fr"] = source_match(embeddings, detected_labels, source_faces.embeddings, "cosine")
    return out
