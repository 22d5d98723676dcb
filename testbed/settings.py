"""Generation settings of the identity-quality benchmark: one config entry each, and the contexts they use.

A setting (``quality.settings.<name>`` in ``configs/testbed_config.yaml``) holds

* ``sampling``: overrides of ``sample.py``'s ``sampling`` keys (``configs/sample_config.yaml``), merged
  over the original's sampling (``preset=original``: DDPM-1000, no guidance, fp32) and ``quality.sampling``:
  ``{sampler: ddim, steps: 25}``, ``{guidance_scale: 2}``.
  A new sampler or guidance option of ``sample.py`` is a new entry here, nothing else;
* ``contexts``: overrides of ``quality.contexts``: ``source`` (``fitted_gaussian``,
  ``synthetic_uniform`` or ``holdout``) and ``separability_threshold``.

Every setting of one run sees the same contexts (a fixed candidate list per source; the separability
filter keeps the first M candidates that pass it) and the same per-image seeds
(:func:`diffusion.generation.image_seed` of the identity name and image index).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from contexts.sources import authentic, fitted_gaussian, separability_filter, synthetic_uniform
from embedding.files import EmbeddingSet
from utils.config import compose
from utils.settings import Number, check_settings

SOURCES = ("fitted_gaussian", "synthetic_uniform", "holdout")

#: What ``build_testbed.py`` and ``benchmarks/identity_quality.py`` check before any work.
SETTINGS = (
    Number("build.image_size", low=8, high=1024, integer=True),
    Number("build.n_train", low=1, high=10**7, integer=True),
    Number("build.n_holdout", low=1, high=10**7, integer=True),
    Number("build.holdout_seed_start", low=0, integer=True),
    Number("build.chunk", low=1, high=10**5, integer=True),
    Number("build.upscale_to", low=16, high=4096, integer=True),
    Number("build.detect_pad", low=0, high=1),
    Number("build.min_face_size", low=1, high=4096, integer=True),
    *(Number(f"quality.{key}", low=low, high=10**6, integer=True) for key, low in (
        ("n_identities", 2), ("images_per_identity", 2), ("quick.n_identities", 2), ("quick.images_per_identity", 2),
        ("seed", 0), ("upscale_to", 16), ("min_face_size", 1), ("figure_identities", 1))),
    Number("quality.detect_pad", low=0, high=1),
    Number("quality.contexts.spread", low=0),
    Number("quality.contexts.pca_components", low=1, integer=True, optional=True),
    Number("quality.contexts.separability_threshold", low=-1, high=1, optional=True),
    Number("quality.contexts.oversample", low=1, high=10**4, integer=True),
)


def check_testbed_settings(cfg: DictConfig) -> None:
    """Check :data:`SETTINGS` on a composed ``testbed_config``; one line naming the key on a bad value."""
    check_settings(cfg, SETTINGS)


@dataclass
class Setting:
    """A named setting: ``sampling`` (merged ``sample.py`` sampling config) and ``contexts`` (merged contexts config)."""

    name: str
    sampling: DictConfig
    contexts: DictConfig


def resolve_settings(quality: DictConfig, names: list[str] | None = None) -> list[Setting]:
    """The settings ``names`` (default: all of ``quality.settings``), each merged over the defaults.

    Raises one line for an unknown name, an unknown sampling key (typo) or an unknown context source.
    """
    available = quality.settings
    names = list(available) if names is None else list(names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"quality settings {unknown} are not defined; known: {sorted(available)}")
    original = compose("sample_config", ["preset=original"]).sampling  # settings say what differs from the original
    base_sampling = OmegaConf.create(OmegaConf.to_container(original, resolve=True))
    OmegaConf.set_struct(base_sampling, True)  # a key sample.py does not know is a typo
    out = []
    for name in names:
        entry = available[name] or {}
        extra = set(entry) - {"sampling", "contexts"}
        if extra:
            raise ValueError(f"quality.settings.{name} has keys {sorted(extra)}; expected sampling and contexts")
        try:
            sampling = OmegaConf.merge(base_sampling, quality.sampling, entry.get("sampling") or {})
        except Exception as err:  # omegaconf raises ConfigKeyError for a key sample_config.yaml does not have
            raise ValueError(f"quality.settings.{name}.sampling: {str(err).splitlines()[0]}") from None
        contexts = OmegaConf.merge(quality.contexts, entry.get("contexts") or {})
        if contexts.source not in SOURCES:
            raise ValueError(f"quality.settings.{name}.contexts.source must be one of {SOURCES}, found {contexts.source!r}")
        out.append(Setting(name, sampling, contexts))
    return out


def candidate_contexts(contexts: DictConfig, n: int, dim: int, seed: int) -> EmbeddingSet:
    """``n`` candidate contexts of a source, named ``<source>_<i>`` (names seed the images).

    Args:
        contexts: merged contexts settings (``source``, ``fit_embeddings``, ``pca_components``, ``spread``,
            ``holdout_embeddings``).
        n: candidates wanted (``holdout`` gives at most the held-out faces).
        dim: context dimension the model expects.
        seed: seed of the random sources.
    """
    if contexts.source == "synthetic_uniform":
        made = synthetic_uniform(n, dim, seed)
    elif contexts.source == "fitted_gaussian":
        made = fitted_gaussian(contexts.fit_embeddings, n, seed,
                               None if contexts.pca_components is None else int(contexts.pca_components),
                               float(contexts.spread))
    else:
        if contexts.holdout_embeddings is None or not Path(contexts.holdout_embeddings).is_file():
            raise FileNotFoundError(f"quality.contexts.holdout_embeddings={contexts.holdout_embeddings} is not a file; "
                                    "build the testbed (python build_testbed.py) or drop the holdout settings")
        made = authentic(contexts.holdout_embeddings)
        made = EmbeddingSet(made.names[:n], made.embeddings[:n])
    if made.dim != dim:
        raise ValueError(f"contexts.source={contexts.source} gives {made.dim}-d contexts but the model expects {dim}-d")
    prefix = "holdout" if contexts.source == "holdout" else contexts.source
    return EmbeddingSet([f"{prefix}_{name}" for name in made.names], made.embeddings)


def setting_contexts(setting: Setting, n_identities: int, dim: int, seed: int) -> EmbeddingSet:
    """The M contexts of a setting: the first M candidates, or the first M that pass the separability filter."""
    c = setting.contexts
    if c.separability_threshold is None:
        made = candidate_contexts(c, n_identities, dim, seed)
    else:
        made = candidate_contexts(c, n_identities * int(c.oversample), dim, seed)
        keep = separability_filter(made.embeddings, float(c.separability_threshold))[:n_identities]
        made = EmbeddingSet([made.names[i] for i in keep], made.embeddings[keep])
    if len(made) < n_identities:
        raise ValueError(f"setting {setting.name}: only {len(made)} contexts of source {c.source} are available "
                         f"(separability_threshold={c.separability_threshold}), fewer than {n_identities} identities")
    return made

