"""Are the invented people new? Each novel identity beside its nearest face of the model's training set.

For identity k with detected images e_ki (unit dlib embeddings) and the R training faces t_n
(``demo.testbed.train_embeddings``), :func:`testbed.metrics.novelty` gives
``s_k = max_n mean_i cos(e_ki, t_n)``, the nearest training face n_k and the identity's own mean
genuine score g_k (mean cosine over pairs of its images). Identity k is a *copy* when ``s_k > g_k``
(a training face is as close to it as its own images are to each other) and *leaks* when ``s_k`` is
above the EER threshold (a verifier at the EER point would accept that training face as identity k).

The training set ships as embeddings only: training face ``"0000042"`` is redrawn from DCGAN latent
seed 42 with the shipped generator (``demo.testbed.dcgan_weights``) and box-downsampled to the
samples' side, exactly as ``python build_testbed.py`` made it (:mod:`testbed.build`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contexts.sources import load_contexts
from cpu_demo.run import DemoRun
from diffusion.generation import to_uint8
from embedding.files import EmbeddingSet, load_embeddings
from evaluation.metrics import check_embeddings
from models.dcgan import generate_faces, load_dcgan_generator
from testbed.faces import resize_images
from testbed.metrics import novelty
from utils.config import resolve_device
from utils.image_io import discover_identities, read_identity, save_png_atomic

log = logging.getLogger(__name__)

#: identities shown in the novelty figure (those nearest a training face first)
FIGURE_ROWS = 8


def training_seeds(train: EmbeddingSet, rows: Sequence[int], source: str) -> list[int]:
    """DCGAN latent seeds of training faces ``rows`` (their names are the seeds, ``"%07d"``)."""
    names = [train.names[i] for i in rows]
    bad = [n for n in names if not n.isdigit()]
    if bad:
        raise ValueError(f"{source}: training face names must be DCGAN seeds such as '0000042' "
                         f"(python build_testbed.py), found {bad[:3]}")
    return [int(n) for n in names]


def identity_novelty(generated: EmbeddingSet, train: EmbeddingSet, eer_threshold: float) -> dict[str, Any]:
    """Per identity and in total: nearest training face, its score s_k, own genuine mean g_k, copies, leakage.

    Args:
        generated: (N, D) unit embeddings with (N,) labels, names ``<identity>/<k>`` (``encode.py``).
        train: (R, D) unit embeddings of the training faces.
        eer_threshold: the verifier's EER threshold on these identities (cosine).
    Returns:
        ``{"identities": [{identity, nearest_train, cos, genuine_mean, n_images, copy}, ...]`` (label order),
        ``novelty_max_cos_mean``, ``copy_share``, ``leakage_share``, ``n_scored``}``; identities with fewer
        than two images are listed but not scored.
    """
    labels = np.asarray(generated.labels)
    nov = novelty(generated.embeddings, labels, train.embeddings)
    names = [""] * len(nov["max_cos"])
    for name, label in zip(generated.names, labels):
        names[label] = name.split("/", 1)[0]
    scored = nov["n_images"] >= 2
    rows = [{"identity": names[k], "nearest_train": train.names[int(nov["nearest"][k])],
             "cos": float(nov["max_cos"][k]), "genuine_mean": float(nov["genuine_mean"][k]) if scored[k] else None,
             "n_images": int(nov["n_images"][k]),
             "copy": bool(scored[k] and nov["max_cos"][k] > nov["genuine_mean"][k])} for k in range(len(names))]
    s, g = nov["max_cos"][scored], nov["genuine_mean"][scored]
    return {"identities": rows, "n_scored": int(scored.sum()), "novelty_max_cos_mean": float(s.mean()),
            "copy_share": float((s > g).mean()), "leakage_share": float((s > eer_threshold).mean())}


def stage_novelty(run: DemoRun, results: Mapping[str, dict]) -> dict[str, Any]:
    """Score every novel identity against the training faces and redraw the nearest faces of the figure's rows."""
    d = run.cfg.demo
    generated = load_embeddings(run.path("generated_embeddings"))
    train = load_contexts(d.testbed.train_embeddings)
    train = EmbeddingSet(train.names, check_embeddings(train.embeddings, None, str(d.testbed.train_embeddings))[0])
    result = identity_novelty(generated, train, float(results["evaluate"]["eer_threshold"]))
    scored = [r for r in result["identities"] if r["genuine_mean"] is not None]
    shown = sorted(scored, key=lambda r: -r["cos"])[:FIGURE_ROWS]
    rows = [train.names.index(r["nearest_train"]) for r in shown]
    seeds = training_seeds(train, rows, str(d.testbed.train_embeddings))
    blocks = discover_identities(results["sample"]["samples_dir"])
    side = read_identity(blocks[shown[0]["identity"]]).shape[1]
    generator = load_dcgan_generator(d.testbed.dcgan_weights, resolve_device(run.device))
    faces = resize_images(to_uint8(generate_faces(generator, seeds)), side)  # (F, side, side, 3), as testbed.build
    for name, face in zip((r["nearest_train"] for r in shown), faces):
        save_png_atomic(face, run.path("novelty") / f"{name}.png")
    log.info("novelty: %d identities scored, mean nearest-training score %.3f, copies %.1f %%, leakage %.1f %%",
             result["n_scored"], result["novelty_max_cos_mean"], 100 * result["copy_share"],
             100 * result["leakage_share"])
    return {**result, "figure": [r["identity"] for r in shown], "faces_dir": str(run.path("novelty"))}


def training_face(result: Mapping[str, Any], identity: str) -> Path:
    """The redrawn nearest training face of a figure row (``<faces_dir>/<seed name>.png``)."""
    row = next(r for r in result["identities"] if r["identity"] == identity)
    return Path(result["faces_dir"]) / f"{row['nearest_train']}.png"
