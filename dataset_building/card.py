"""Dataset cards: ``dataset_card.json`` (the facts) and ``dataset_card.md`` (Hugging Face layout) in a dataset folder.

Every fact comes from a file the tools already write, followed link by link from the dataset back
to the generator; nothing is typed in by hand::

    split / export output --its input folder-->
        a dataset folder with dataset_card.json        its facts are copied (no second hashing)
        an aligned folder: alignment_report.json       counts, settings, input_dir -->
        a derived folder: provenance.json              any other step's input_dir (record_derivation) -->
        a samples folder <dir>: <dir>.yaml beside it   sample.py's config copy -->
            checkpoint.path: <run>/.hydra/config.yaml (run config), checkpoints/<checkpoint.which>.ckpt
            paths.vq_decoder (latent runs), sampling.* (sampler settings)
            sampling.contexts_file (+ <stem>.yaml of create_sample_identity_contexts.py: source, seed)

A link that is missing is written as ``null`` and explained in ``notes`` (keyed by the field),
never guessed. Files are hashed (SHA-256) by streaming them in 1 MiB chunks, each at most once per
card. Two reports are given by path: ``evaluate.py``'s ``report.json`` (identity quality) and a
filter report of ``filter_identities.py``; :func:`update_card` adds them to a card
written before they existed. Licences, intended use and the markdown come from
:mod:`dataset_building.card_render`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from dataset_building.card_render import describe_licences, limits, render_markdown, size_category
from dataset_building.filter_report import FilterReport
from utils.atomic import write_json_atomic, write_text_atomic
from utils.image_io import folder_images

log = logging.getLogger(__name__)

CARD_JSON = "dataset_card.json"
CARD_MD = "dataset_card.md"
ALIGNMENT_REPORT = "alignment_report.json"
LINK = "provenance.json"
CARD_VERSION = 1
CHUNK = 1 << 20
#: the facts a card copies from the card of its input dataset
UPSTREAM_FIELDS = ("generator", "sampling", "contexts", "filters", "alignment", "identity_quality")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (constant memory for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_file(run_dir: Path, which: str | int) -> Path | None:
    """``checkpoint.which`` -> ``<run>/checkpoints/<file>``, the names ``sample.py`` loads; None if unknown."""
    name = str(which)
    files = {"ema": "ema_averaged_model.ckpt", "raw": "model.ckpt"}
    if name in files:
        return run_dir / "checkpoints" / files[name]
    return run_dir / "checkpoints" / f"ema_averaged_model_{name}.ckpt" if name.isdigit() else None


def count_class_folders(folder: str | os.PathLike) -> dict:
    """Identities and images of ``<folder>/<identity>/<k>.png``, counted on disk (hidden temporaries left out).

    Returns:
        ``{"format": "folders", "identities", "images", "images_per_identity": {"min", "max"},
        "image_size": side of the first image or None, "image_format": "png"}``.
    """
    counts, first = [], None
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            images = folder_images(Path(entry.path))
            if images:
                counts.append(len(images))
                first = first or images[0]
    size = None
    if first is not None:
        with Image.open(first) as image:
            size = image.width if image.width == image.height else list(image.size)
    return {"format": "folders", "identities": len(counts), "images": sum(counts),
            "images_per_identity": {"min": min(counts, default=0), "max": max(counts, default=0)},
            "image_size": size, "image_format": "png"}


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the {what} as JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected the {what} as a JSON object, found {type(data).__name__}")
    return data


class CardFacts:
    """Collects the facts of one card; ``notes`` explains every field left null."""

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}
        self._hashes: dict[Path, str] = {}

    def missing(self, field: str, why: str) -> None:
        """Record why ``field`` is null; returns None (the field's value)."""
        self.notes.setdefault(field, why)

    def forget(self, field: str) -> None:
        """Drop the notes on ``field`` and its sub-fields (it was filled after all)."""
        self.notes = {k: v for k, v in self.notes.items() if k != field and not k.startswith(f"{field}.")}

    def file(self, path: str | os.PathLike | None, field: str, what: str) -> dict | None:
        """``{"file", "path", "bytes", "sha256"}`` of a file, or None with a note when it is not there."""
        if path is None:
            return self.missing(field, f"no {what} is named")
        path = Path(path)
        if not path.is_file():
            return self.missing(field, f"{what} {path} is not there (relative paths are taken from the directory "
                                       f"the card is written from, cwd {Path.cwd()})")
        resolved = path.resolve()
        if resolved not in self._hashes:
            self._hashes[resolved] = sha256_file(resolved)
        return {"file": path.name, "path": str(resolved), "bytes": resolved.stat().st_size,
                "sha256": self._hashes[resolved]}

    def yaml(self, path: Path, field: str) -> dict:
        """A YAML config as a dict, interpolations resolved (left as written, with a note, if they cannot be)."""
        cfg = OmegaConf.load(path)
        try:
            return OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as err:
            self.missing(f"{field}.interpolations", f"{path}: interpolations kept as written ({err})".splitlines()[0])
            return OmegaConf.to_container(cfg, resolve=False)

    def trace(self, source_dir: Path) -> dict:
        """Follow the links from ``source_dir`` (module docstring): ``{"chain": [...], <UPSTREAM_FIELDS>: ...}``."""
        facts: dict[str, Any] = {"chain": [], **{k: None for k in UPSTREAM_FIELDS}}
        folder, seen = source_dir.resolve(), set()
        while folder not in seen:
            seen.add(folder)
            card, report = folder / CARD_JSON, folder / ALIGNMENT_REPORT
            samples_cfg = folder.with_name(f"{folder.name}.yaml")
            if card.is_file():
                upstream = _read_json(card, "dataset card")
                facts["chain"] += upstream["provenance"]["chain"]
                facts.update({k: upstream.get(k) for k in UPSTREAM_FIELDS})
                for field, why in upstream.get("notes", {}).items():
                    if field.split(".")[0] in UPSTREAM_FIELDS + ("provenance",):
                        self.missing(field, why)
                return facts
            if report.is_file():
                data = _read_json(report, "alignment report")
                facts["chain"].append({"folder": str(folder), "via": ALIGNMENT_REPORT, "step": "align.py"})
                facts["alignment"] = {"report": str(report), "totals": data.get("totals"),
                                      "just_resize_if_fail": data.get("just_resize_if_fail"),
                                      "settings": data.get("settings")}
                if data.get("streamed"):  # sample.py aligned in-process: its config copy lies beside this folder
                    if samples_cfg.is_file():
                        facts["chain"].append({"folder": str(folder), "via": samples_cfg.name, "step": "sample.py"})
                        facts.update(self.samples(samples_cfg))
                        return facts
                    self.missing("provenance", f"{report} was written by sample.py, but its config copy "
                                               f"{samples_cfg.name} is not beside {folder}")
                    break
                if not data.get("input_dir"):
                    self.missing("provenance", f"{report} does not record its input folder (written by an align.py "
                                               "older than input_dir); the samples and the generator are unknown")
                    break
                folder = Path(data["input_dir"])
                continue
            if (folder / LINK).is_file():
                link = _read_json(folder / LINK, "provenance link")
                facts["chain"].append({"folder": str(folder), "via": LINK, "step": link.get("step"),
                                       "settings": link.get("settings")})
                folder = Path(link["input_dir"])
                continue
            if samples_cfg.is_file():
                facts["chain"].append({"folder": str(folder), "via": samples_cfg.name, "step": "sample.py"})
                facts.update(self.samples(samples_cfg))
                return facts
            facts["chain"].append({"folder": str(folder), "via": None, "step": None})
            self.missing("provenance", f"the chain ends at {folder}: it has no {CARD_JSON}, {ALIGNMENT_REPORT} or "
                                       f"{LINK}, and no {samples_cfg.name} (sample.py's config copy) lies beside it")
            break
        else:
            self.missing("provenance", f"the chain loops back to {folder}")
        for field in ("generator", "sampling", "contexts"):
            if facts[field] is None:
                self.missing(field, "not reached: the provenance chain ends before the samples (see notes.provenance)")
        return facts

    def samples(self, path: Path) -> dict:
        """Generator, sampler and contexts facts from ``sample.py``'s config copy ``<samples dir>.yaml``."""
        cfg = self.yaml(path, "sampling")
        checkpoint, sampling = cfg.get("checkpoint") or {}, cfg.get("sampling") or {}
        run_dir = Path(checkpoint["path"]) if checkpoint.get("path") else None
        generator: dict[str, Any] = {"samples_config": str(path.resolve()), "which": checkpoint.get("which"),
                                     "run_dir": None, "run_name": None, "run_config": None, "checkpoint": None,
                                     "latent_diffusion": None, "vq_decoder": None}
        if run_dir is None:
            self.missing("generator.run_dir", f"{path} has no checkpoint.path")
        elif not (run_dir / ".hydra" / "config.yaml").is_file():
            self.missing("generator.run_config", f"{run_dir / '.hydra' / 'config.yaml'} is not there")
        else:
            run_config = self.yaml(run_dir / ".hydra" / "config.yaml", "generator.run_config")
            generator.update(run_dir=str(run_dir.resolve()), run_name=run_dir.name, run_config=run_config,
                             latent_diffusion=bool(run_config.get("latent_diffusion", False)))
        if run_dir is not None:
            ckpt = checkpoint_file(run_dir, checkpoint.get("which", "ema"))
            generator["checkpoint"] = (self.file(ckpt, "generator.checkpoint", "the generator checkpoint") if ckpt
                                       else self.missing("generator.checkpoint",
                                                         f"checkpoint.which={checkpoint.get('which')!r} is unknown"))
        if generator["latent_diffusion"]:
            decoder = (cfg.get("paths") or {}).get("vq_decoder")
            generator["vq_decoder"] = self.file(decoder, "generator.vq_decoder", "the VQ-f4 decoder (paths.vq_decoder)")
        elif generator["latent_diffusion"] is False:
            self.missing("generator.vq_decoder", "a pixel-space run (latent_diffusion: false) uses no VQ decoder")
        sampling = {**sampling, "device": cfg.get("device")}
        return {"generator": generator, "sampling": sampling, "contexts": self.contexts(sampling.get("contexts_file"))}

    def contexts(self, contexts_file: str | None) -> dict:
        """The contexts file (hash) and, if ``create_sample_identity_contexts.py`` recorded them, its settings."""
        facts: dict[str, Any] = {"file": self.file(contexts_file, "contexts.file", "the contexts file "
                                                   "(sampling.contexts_file)"),
                                 "source": None, "seed": None, "settings": None}
        settings_file = Path(contexts_file).with_suffix(".yaml") if contexts_file else None
        if settings_file is not None and settings_file.is_file():
            settings = self.yaml(settings_file, "contexts.settings").get("contexts") or {}
            facts.update(settings=settings, source=settings.get("source"), seed=settings.get("seed"))
        else:
            for field in ("source", "seed", "settings"):
                self.missing(f"contexts.{field}", f"no {settings_file.name if settings_file else '<contexts>.yaml'} "
                                                  "beside the contexts file (contexts not made by this toolkit's "
                                                  "create_sample_identity_contexts.py, e.g. the original release)")
        return facts


def record_derivation(folder: str | os.PathLike, input_dir: str | os.PathLike, step: str, settings: dict) -> Path:
    """Write ``<folder>/provenance.json``, the link a step that turns one folder of identities into another
    (e.g. the demo's upscaling before alignment) leaves for the dataset cards to follow back to ``input_dir``."""
    return write_json_atomic(Path(folder) / LINK, {"input_dir": str(Path(input_dir).resolve()), "step": step,
                                                   "settings": settings}, indent=1)


def _evaluation(path: Path, facts: CardFacts) -> dict:
    report = _read_json(path, "evaluation report")
    if "verification" not in report or "dataset" not in report:
        raise ValueError(f"{path}: expected evaluate.py's report.json (sections 'dataset' and 'verification'), "
                         f"found sections {sorted(report)}")
    return {"report": facts.file(path, "identity_quality.report", "the evaluation report"), **report}


def _filters(path: Path, facts: CardFacts) -> dict:
    """What ``filter_identities.py`` did: its settings, the input it read and its counts (``dropped``)."""
    report = FilterReport.load(path)
    return {"report": facts.file(path, "filters.report", "the filter report"), "settings": report.settings,
            "source": report.source, "dropped": report.counts, "kept_images": report.kept_images}


def build_card(
    dataset_dir: str | os.PathLike,
    source_dir: str | os.PathLike,
    made_by: dict,
    contents: dict,
    evaluation_report: str | os.PathLike | None = None,
    filter_report: str | os.PathLike | None = None,
) -> dict:
    """The facts of a dataset card (what ``dataset_card.json`` holds).

    Args:
        dataset_dir: the dataset folder the card describes.
        source_dir: the folder it was made from (the first link of the provenance chain).
        made_by: ``{"tool": script name, "settings": {...}}`` of the step that wrote ``dataset_dir``.
        contents: what was written: ``format``, ``identities``, ``images``, ``images_per_identity``
            ``{min, max}``, ``image_size``, ``image_format`` and optionally ``files``.
        evaluation_report: ``evaluate.py``'s ``report.json`` for this dataset (else the input card's, if any).
        filter_report: ``filter_identities.py``'s report (else the input card's).
    """
    dataset_dir, source_dir = Path(dataset_dir).resolve(), Path(source_dir)
    facts = CardFacts()
    traced = facts.trace(source_dir)
    tool = {"name": "idiff-face-toolkit", "version": importlib.metadata.version("idiff-face-toolkit")}
    chain = [{"folder": str(dataset_dir), "via": CARD_JSON, "step": made_by["tool"]}] + traced["chain"]
    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "pretty_name": f"{dataset_dir.name}: {contents['identities']:,} synthetic identities, "
                       f"{contents['images']:,} images",
        "dataset": {"path": str(dataset_dir), **contents,
                    "size_category": size_category(int(contents["images"]))},
        "made_by": {**made_by, "input": str(source_dir.resolve()), "toolkit": tool},
        "provenance": {"chain": chain},
        **{k: traced[k] for k in UPSTREAM_FIELDS},
    }
    if evaluation_report is not None:
        facts.forget("identity_quality")
        card["identity_quality"] = _evaluation(Path(evaluation_report), facts)
    if filter_report is not None:
        facts.forget("filters")
        card["filters"] = _filters(Path(filter_report), facts)
    if card["filters"] is None:
        facts.missing("filters", "no filter report was given (filter_report) and the input has none: no filter ran, "
                                 "or its report was not passed")
    if card["alignment"] is None:
        facts.missing("alignment", f"no {ALIGNMENT_REPORT} on the provenance chain")
    quality = card["identity_quality"]
    facts.forget("identity_quality.dataset")  # an input card's remark on its own identity count
    if quality is None:
        facts.missing("identity_quality", "no evaluation report was given (encode.py + evaluate.py, then "
                                          "evaluation_report=<report.json>)")
    elif quality["dataset"].get("n_identities") != contents["identities"]:
        facts.missing("identity_quality.dataset", f"measured on {quality['dataset'].get('n_identities')} identities "
                                                  f"({quality['dataset'].get('synthetic')}), this dataset has "
                                                  f"{contents['identities']}")
    card.update(describe_licences(card, facts.missing))
    card["limits"] = limits(card)
    card["notes"] = dict(sorted(facts.notes.items()))
    return card


def write_dataset_card(dataset_dir: str | os.PathLike, source_dir: str | os.PathLike, made_by: dict, contents: dict,
                       evaluation_report: str | os.PathLike | None = None,
                       filter_report: str | os.PathLike | None = None) -> dict:
    """Build the card (:func:`build_card`) and write ``dataset_card.json`` and ``dataset_card.md`` atomically."""
    card = build_card(dataset_dir, source_dir, made_by, contents, evaluation_report, filter_report)
    write_json_atomic(Path(dataset_dir) / CARD_JSON, card, indent=1)
    write_text_atomic(Path(dataset_dir) / CARD_MD, render_markdown(card))
    log.info("dataset card %s (%d notes on missing facts)", Path(dataset_dir) / CARD_MD, len(card["notes"]))
    return card


def update_card(dataset_dir: str | os.PathLike, evaluation_report: str | os.PathLike | None = None,
                filter_report: str | os.PathLike | None = None) -> dict:
    """Write the card of ``dataset_dir`` again with reports made after it (``encode.py`` + ``evaluate.py`` on it).

    The step, its settings, its input and the contents come from the card there; a report left None
    keeps the one the card names, if any.
    """
    path = Path(dataset_dir) / CARD_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: write the dataset with split_identity_blocks.py or "
                                "export_dataset.py first")
    card = _read_json(path, "dataset card")
    named = {field: _get_path(card, field) for field in ("identity_quality", "filters")}
    contents = {k: v for k, v in card["dataset"].items() if k not in ("path", "size_category")}
    made_by = {k: v for k, v in card["made_by"].items() if k not in ("input", "toolkit")}
    return write_dataset_card(dataset_dir, card["made_by"]["input"], made_by, contents,
                              evaluation_report or named["identity_quality"], filter_report or named["filters"])


def _get_path(card: dict, field: str) -> str | None:
    """The path of the report a card's ``field`` was read from, if it names one."""
    return ((card.get(field) or {}).get("report") or {}).get("path")
