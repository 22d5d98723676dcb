"""What determines the images of a samples folder, recorded beside them: a rerun with other settings is refused.

``sample.py`` resumes by skipping what exists, so a rerun with another seed, sampler or checkpoint
would keep the old images under new settings. :func:`sampling_fingerprint` collects everything that
decides the pixels (the SHA-256 of the checkpoint, of the run config, of the VQ decoder and of the
contexts file; ``n_contexts``, the seed, every :class:`~diffusion.sampling_settings.SamplerSettings`
field with the negative file replaced by its digest, the image count, the output kind and, for
outputs aligned in-process, the alignment and shard settings). :func:`claim_folder` writes it as
``sampling_fingerprint.json`` when the folder is created and compares it on every later run: equal
settings resume, any difference is refused before anything is written, with one line that names
what differs and how to start a new folder.

What does not change pixels is left out: ``batch_size`` (images do not depend on it), the number of
processes, file paths (a moved contexts file with the same bytes is the same contexts file).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffusion.sampling_settings import SamplerSettings
from utils.atomic import is_temporary, write_json_atomic

log = logging.getLogger(__name__)

FINGERPRINT = "sampling_fingerprint.json"


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file read ``chunk_size`` bytes at a time (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def sampling_fingerprint(
    checkpoint: str | os.PathLike,
    contexts_file: str | os.PathLike,
    n_contexts: int,
    seed: int,
    n_samples_per_context: int,
    settings: SamplerSettings,
    output: str,
    vq_decoder: str | os.PathLike | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fingerprint of a sampling run; each large file is hashed once, by streaming.

    Args:
        checkpoint: the ``.ckpt`` file sampled from; its run folder's ``.hydra/config.yaml`` is hashed too.
        contexts_file: the contexts file; ``n_contexts`` the first n identities of it that are sampled.
        settings: the sampler settings; ``negative.file`` is recorded by its SHA-256.
        output: ``sampling.output``.
        vq_decoder: the VQ decoder file of a latent run (None for pixel-space runs).
        extra: further settings that shape the output (alignment, shard format), recorded as given.
    Returns:
        A JSON-ready dict (nested dicts for groups of settings).
    """
    start = time.perf_counter()
    checkpoint = Path(checkpoint)
    sampler = dataclasses.asdict(settings)
    negative_file = sampler["negative"].pop("file")
    sampler["negative"]["file_sha256"] = None if negative_file is None else file_sha256(negative_file)
    fingerprint = {
        "checkpoint_sha256": file_sha256(checkpoint),
        "run_config_sha256": file_sha256(checkpoint.parent.parent / ".hydra" / "config.yaml"),
        "vq_decoder_sha256": None if vq_decoder is None else file_sha256(vq_decoder),
        "contexts_sha256": file_sha256(contexts_file),
        "n_contexts": int(n_contexts),
        "seed": int(seed),
        "n_samples_per_context": int(n_samples_per_context),
        "output": output,
        "sampler": sampler,
        **dict(extra or {}),
    }
    log.info("fingerprint of %s and %s computed in %.1f s", checkpoint, contexts_file, time.perf_counter() - start)
    return json.loads(json.dumps(fingerprint))  # tuples -> lists: the form it has when read back


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def fingerprint_differences(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``"<key>: <value there> there, <value now> now"`` for every (dotted) key whose values differ."""
    there, now = _flatten(found), _flatten(wanted)
    missing = "<absent>"
    return [f"{key}: {there.get(key, missing)!r} there, {now.get(key, missing)!r} now"
            for key in sorted(set(there) | set(now)) if there.get(key, missing) != now.get(key, missing)]


def claim_folder(folder: str | os.PathLike, fingerprint: Mapping[str, Any]) -> Path:
    """Create ``folder`` with its fingerprint, or check that it holds samples of the same settings.

    Raises:
        ValueError: ``folder`` was made with other settings, or holds files but no fingerprint; nothing
            is written then.
    Returns:
        The fingerprint file.
    """
    folder = Path(folder)
    path = folder / FINGERPRINT
    advice = f"to keep both, choose another sampling.out_dir; to start over, delete {folder}"
    if path.is_file():
        differences = fingerprint_differences(json.loads(path.read_text()), fingerprint)
        if differences:
            raise ValueError(f"{folder} holds samples made with other settings ({'; '.join(differences)}); {advice}")
        log.info("%s: same settings as the samples there, resuming", folder)
        return path
    if folder.is_dir() and any(not is_temporary(entry) for entry in folder.iterdir()):
        raise ValueError(f"{folder} holds files but no {FINGERPRINT} (made by an older sample.py?), so the settings "
                         f"of its samples are unknown; {advice}")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, dict(fingerprint), indent=1, sort_keys=True)
    return path
