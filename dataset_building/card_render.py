"""The words of a dataset card: licence chain, intended use and limits, and the markdown (Hugging Face layout).

:func:`describe_licences` decides, from the facts of :mod:`dataset_building.card`, which parts of the
chain apply: the VQ-f4 first stage (a latent run), FFHQ (on which that first stage and the published
IDiff-Face weights were trained), the published IDiff-Face weights (a run folder without the
``autoencoder`` group that this toolkit's ``main.py`` writes), the FR models (identified by the
embedding dimension: this toolkit's backends are ElasticFace-Arc, 512-d, and dlib, 128-d) and MTCNN.
A part whose use the facts do not settle is marked ``applies: null`` with the reason.
:func:`render_markdown` writes YAML front matter (``license``, ``task_categories``,
``size_categories``, ``pretty_name``, ``tags``) and the sections of the card.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml

NC_SA = "cc-by-nc-sa-4.0"
TAGS = ["synthetic", "face-recognition", "faces", "diffusion", "idiff-face", "privacy"]
SIZE_BINS = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
             (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"))
FR_BY_DIM = {512: "elasticface", 128: "dlib"}
FR_BY_BACKEND = {"iresnet": "elasticface", "dlib": "dlib"}
FR_MODELS = {
    "elasticface": ("ElasticFace-Arc iResNet-100 (295672backbone.pth, Boutros et al. 2022)",
                    "MIT (fdbtrs/ElasticFace); trained on MS1MV2, a cleaned MS-Celeb-1M, which Microsoft withdrew in "
                    "2019: check its terms before any use beyond research"),
    "dlib": ("dlib face recognition ResNet v1 (dlib_face_recognition_resnet_model_v1.dat, 128-d)",
             "public domain (Davis King's dlib-models, as face_recognition_models 0.3.0 states)"),
}
INTENDED_USE = ("Training and benchmarking face recognition models in research where the faces of real people "
                "should not be used: the identities were invented by the generator from identity contexts. Not for "
                "identifying, verifying or profiling real people, and not for commercial use while the licence "
                "chain below carries NonCommercial terms.")
Missing = Callable[[str, str], None]


def size_category(n: int) -> str:
    """Hugging Face ``size_categories`` bin of ``n`` examples (``10K<n<100K`` ...)."""
    return next((name for bound, name in SIZE_BINS if n < bound), "1B<n<10B")


def _get(data: dict | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def fr_models(card: dict, missing: Missing) -> list[dict]:
    """The FR models the facts show: conditioning (run config's context dimension), contexts from images, evaluation."""
    found = []
    run_config = _get(card, "generator", "run_config")
    dim = _get(run_config, "constants", "context_dim") or _get(run_config, "model", "context_input_channels")
    if dim is not None:
        found.append(("identity contexts the generator was trained on and sampled with",
                      FR_BY_DIM.get(int(dim)), f"context dimension {dim} in the run config"))
    backend = _get(card, "contexts", "settings", "fr_backend", "name")
    if _get(card, "contexts", "source") == "from_images" and backend:
        found.append(("contexts embedded from images", FR_BY_BACKEND.get(backend),
                      f"contexts.fr_backend.name={backend}"))
    dim = _get(card, "identity_quality", "dataset", "dim")
    if dim is not None:
        found.append(("identity-quality evaluation (encode.py)", FR_BY_DIM.get(int(dim)),
                      f"{dim}-d embeddings in the evaluation report"))
    if not found:
        missing("fr_models", "neither the run config nor an evaluation report is known")
    models = []
    for role, key, evidence in found:
        name, licence = FR_MODELS.get(key, (None, None))
        models.append({"role": role, "model": key, "name": name, "licence": licence, "evidence": evidence})
        if key is None:
            missing(f"fr_models.{role}", f"{evidence}: not a dimension of this toolkit's FR backends (512, 128)")
    return models


def describe_licences(card: dict, missing: Missing) -> dict:
    """``{"license": HF licence id, "fr_models": [...], "licences": [...]}`` of the chain that made the dataset."""
    generator = card.get("generator") or {}
    run_config, latent = generator.get("run_config"), generator.get("latent_diffusion")
    unknown = "the run config is not known (see notes.generator)"
    if run_config is None:
        published, why_published = None, unknown
    elif "autoencoder" in run_config:
        published, why_published = False, "the run config has the autoencoder group this toolkit's main.py writes"
    else:
        published, why_published = True, "the run config has no autoencoder group, like the published run folders"
    if latent or published:
        ffhq, why_ffhq = True, ("the VQ-f4 first stage was trained on FFHQ" if latent
                                else "the published IDiff-Face weights were trained on FFHQ")
    else:
        ffhq, why_ffhq = None, unknown if run_config is None else (
            f"a pixel-space run trained on dataset.images_root={_get(run_config, 'dataset', 'images_root')}, "
            "whose licence is not recorded")
    licences = [
        {"component": "FFHQ (Karras et al., NVIDIA)", "applies": ffhq, "because": why_ffhq,
         "licence": "CC BY-NC-SA 4.0 (the dataset; each photo also keeps its own Flickr licence)"},
        {"component": "IDiff-Face published weights (Boutros et al., ICCV 2023; Fraunhofer IGD)", "applies": published,
         "because": why_published, "licence": "CC BY-NC-SA 4.0"},
        {"component": "CompVis latent-diffusion VQ-f4 first stage (ffhq256 LDM)", "applies": latent,
         "because": unknown if latent is None else f"latent_diffusion: {str(latent).lower()} in the run config",
         "licence": "MIT (CompVis/latent-diffusion); trained on FFHQ"},
    ]
    models = fr_models(card, missing)
    for key in dict.fromkeys(m["model"] for m in models if m["model"]):  # one row per model, all its roles
        uses = [m for m in models if m["model"] == key]
        licences.append({"component": uses[0]["name"], "applies": True, "licence": uses[0]["licence"],
                         "because": "; ".join(f"{m['role']}: {m['evidence']}" for m in uses)})
    if card.get("alignment") is not None:
        licences.append({"component": "MTCNN weights of facenet-pytorch", "applies": True,
                         "because": "align.py detected the faces", "licence": "MIT"})
    if any(entry["applies"] and "CC BY-NC-SA 4.0" in entry["licence"] for entry in licences):
        license_id = NC_SA
    else:
        license_id = "unknown"
        missing("license", "no part of the chain with a share-alike licence applies for certain, and the licence "
                           "of the generator's training images is not recorded")
    return {"license": license_id, "fr_models": models, "licences": licences}


def limits(card: dict) -> list[str]:
    """The limits of this dataset, with the run's numbers where they exist."""
    out = ["Identities are invented, not checked against every real person: a generated face can resemble a real one."]
    leak = _get(card, "identity_quality", "leakage")
    if leak:
        out.append(f"Leakage against {leak.get('real')}: {leak.get('n_leaked')} identity centres above cosine "
                   f"{leak.get('leakage_threshold')} to a real face (nearest real: mean "
                   f"{_fmt(leak.get('real_nn_mean'))}, max {_fmt(leak.get('real_nn_max'))}).")
    else:
        out.append("Leakage against the generator's training faces was not measured (evaluate.py with evaluate.real).")
    totals = _get(card, "alignment", "totals") or {}
    if totals.get("resized"):
        out.append(f"{totals['resized']:,} of {sum(totals.get(k, 0) for k in ('detected', 'resized', 'dropped')):,} "
                   "generated images had no detected face and were resized, not aligned (just_resize_if_fail).")
    if totals.get("dropped"):
        out.append(f"{totals['dropped']:,} generated images without a detected face were dropped.")
    out.append("Demographic attributes (age, gender, skin tone) were not measured; the generator reproduces the "
               "distribution of its training faces, so groups that are rare there are rare here.")
    out.append("Labels are identity contexts, not verified identities: two contexts can give look-alike faces and one "
               "context can drift (see uniqueness and consistency).")
    if card.get("identity_quality") is None:
        out.append("Identity separability was not measured (encode.py + evaluate.py).")
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "null" if value is None else str(value)


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows] + [""]


def _file_row(what: str, facts: dict | None) -> tuple:
    return (what, None, None, None) if facts is None else (what, facts["file"], facts["bytes"], facts["sha256"])


def _structure(dataset: dict) -> list[str]:
    fmt = dataset.get("format")
    lines = {
        "folders": ["One folder per identity, `<identity>/<k>.png` (label = position of the identity in natural "
                    "name order). Read by `face_recognition_training` (`data.format=folders`) and torchvision's "
                    "`ImageFolder`."],
        "rec": ["insightface RecordIO: `train.rec` (records), `train.idx` (key and byte offset per record), "
                "`property` (`classes,height,width`). Each image record is an `IRHeader` (label) plus the encoded "
                "image; read by arcface_torch's `MXFaceDataset`, MXNet's `MXIndexedRecordIO`, NVIDIA DALI and "
                "`face_recognition_training` (`data.format=rec`). Merge settings: " + _fmt(dataset.get("rec")) + "."],
        "webdataset": ["WebDataset tar shards `shard-<s>.tar`: sample `<identity>/<k>` with the image "
                       f"(`.{dataset.get('image_format')}`) and its class label (`.cls`); each shard has a `.json` "
                       "sidecar. Read by `webdataset` and `face_recognition_training` (`data.format=webdataset`)."],
    }.get(fmt, [f"format {fmt}"])
    files = dataset.get("files") or []
    if files:
        rows = [(f["file"], f.get("bytes"), f.get("images")) for f in files]
        lines += ["", *_table(("file", "bytes", "images"), rows)]
    return lines


def _made(card: dict) -> list[str]:
    """The steps of the flow, one numbered line each."""
    contexts, sampling = card.get("contexts") or {}, card.get("sampling") or {}
    alignment, filters, made_by = card.get("alignment") or {}, card.get("filters"), card["made_by"]
    filtered = (f"dropped {_fmt(filters.get('dropped'))}; settings {_fmt(filters.get('settings'))}" if filters
                else "null")
    return [f"1. Contexts: source {_fmt(contexts.get('source'))}, seed {_fmt(contexts.get('seed'))}, "
            f"file `{_fmt(_get(contexts, 'file', 'file'))}`; settings {_fmt(contexts.get('settings'))}.",
            "2. Sampling (`sample.py`): " + ", ".join(f"{k}={_fmt(v)}" for k, v in sampling.items()) + ".",
            f"3. Alignment (`align.py`): {_fmt(alignment.get('totals'))}; settings {_fmt(alignment.get('settings'))}.",
            f"4. Filters: {filtered}.",
            f"5. `{made_by['tool']}`: {_fmt(made_by.get('settings'))}.", ""]


def _provenance(card: dict) -> list[str]:
    """The chain of folders, then the hashed files."""
    generator, contexts = card.get("generator") or {}, card.get("contexts") or {}
    chain = [(c["folder"], c["via"], c["step"]) for c in card["provenance"]["chain"]]
    files = [_file_row("generator checkpoint", generator.get("checkpoint")),
             _file_row("VQ-f4 decoder", generator.get("vq_decoder")),
             _file_row("contexts", contexts.get("file")),
             _file_row("evaluation report", _get(card, "identity_quality", "report")),
             _file_row("filter report", _get(card, "filters", "report"))]
    return [*_table(("folder", "via", "step"), chain), *_table(("what", "file", "bytes", "sha256"), files),
            f"Run folder: `{_fmt(generator.get('run_dir'))}` (its `.hydra/config.yaml` is in `dataset_card.json` "
            "under `generator.run_config`).", ""]


def _quality(card: dict) -> list[str]:
    """The numbers of ``evaluate.py``'s report, or "Not measured."."""
    quality = card.get("identity_quality")
    if not quality:
        return ["Not measured.", ""]
    rows = [(f"{section}.{k}", v) for section in ("verification", "identities", "leakage")
            for k, v in (quality.get(section) or {}).items() if isinstance(v, (int, float))]
    measured = quality.get("dataset") or {}
    return [f"Measured with `evaluate.py` on {_fmt(measured.get('n_embeddings'))} embeddings of "
            f"{_fmt(measured.get('n_identities'))} identities ({_fmt(measured.get('dim'))}-d).", "",
            *_table(("metric", "value"), rows)]


def render_markdown(card: dict) -> str:
    """``dataset_card.md``: YAML front matter, then summary, how it was made, structure, provenance,
    identity quality, licences, intended use and limits, and the notes on missing facts."""
    dataset, generator, made_by = card["dataset"], card.get("generator") or {}, card["made_by"]
    front = {"license": card["license"], "pretty_name": card["pretty_name"],
             "task_categories": ["image-classification"], "size_categories": [dataset["size_category"]],
             "tags": TAGS, "annotations_creators": ["machine-generated"]}
    per_id = dataset.get("images_per_identity") or {}
    summary = (f"{_fmt(dataset['identities'])} synthetic identities, {_fmt(dataset['images'])} face images "
               f"({_fmt(per_id.get('min'))}-{_fmt(per_id.get('max'))} per identity), "
               f"{_fmt(dataset.get('image_size'))} px {dataset.get('image_format')}, format `{dataset['format']}`. "
               f"Generator: `{_fmt(generator.get('run_name'))}` ({_fmt(_get(generator, 'checkpoint', 'file'))}), "
               f"sampler {_fmt(_get(card, 'sampling', 'sampler'))}, contexts {_fmt(_get(card, 'contexts', 'source'))}.")
    licences = [(e["component"], e["licence"], e["applies"], e["because"]) for e in card["licences"]]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {card['pretty_name']}", "",
             f"Written by `{made_by['tool']}` ({made_by['toolkit']['name']} {made_by['toolkit']['version']}) from "
             "the files of the run; `dataset_card.json` holds every fact below. Regenerate it with the tool instead "
             "of editing it.", "",
             "## Summary", "", summary, "",
             "## How it was made", "", *_made(card),
             "## Structure", "", *_structure(dataset), "",
             "## Provenance", "", *_provenance(card),
             "## Identity quality", "", *_quality(card),
             "## Licences", "", f"Dataset licence: `{card['license']}` (the most restrictive part of the chain "
                                "that applies).", "",
             *_table(("component", "licence", "applies", "because"), licences),
             "## Intended use and limits", "", INTENDED_USE, "", *[f"- {item}" for item in card["limits"]], ""]
    if card["notes"]:
        lines += ["## Missing facts", "", *[f"- `{field}`: {why}" for field, why in card["notes"].items()], ""]
    return "\n".join(lines)
