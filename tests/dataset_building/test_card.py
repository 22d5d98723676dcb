"""Dataset cards: every fact of dataset_card.json checked against the files of a tiny provenance chain on disk.

The chain is made by the real tools where they are cheap (contexts_from_config, the sample.py config
copy, align_identities with a stand-in detector, evaluate_sets, split and export); the generator
checkpoint and the VQ decoder are random bytes, since the card hashes them and never loads them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

import dataset_building.card as card_module
from alignment.blocks import align_identities
from contexts.sources import contexts_from_config
from dataset_building.card import CARD_JSON, CARD_MD, checkpoint_file, record_derivation, update_card
from dataset_building.card_render import describe_licences, size_category
from dataset_building.export import export_dataset
from dataset_building.filter_report import FilterReport
from dataset_building.split import split_identities
from diffusion.generation import checkpoint_path
from embedding.files import EmbeddingSet
from evaluation.report import evaluate_sets
from utils.config import compose
from utils.image_io import discover_identities, read_identity, write_block

SIZE = 16
TILES = {"0": 4, "1": 3, "2": 5}
SECTIONS = ["## Summary", "## How it was made", "## Structure", "## Provenance", "## Identity quality",
            "## Licences", "## Intended use and limits"]


class StandInAligner:
    """The :class:`alignment.aligner.FaceAligner` interface: every third tile has "no face"."""

    def align(self, tiles: list[np.ndarray], template: str, size: int) -> list[np.ndarray | None]:
        return [None if k % 3 == 2 else cv2.resize(t, (size, size), interpolation=cv2.INTER_AREA)
                for k, t in enumerate(tiles)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_chain(root: Path, published: bool = False) -> dict[str, Path]:
    """run folder -> contexts -> samples + <samples>.yaml -> aligned + alignment_report.json; eval, filter reports."""
    run = root / "trained_models" / "tiny-run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    train_cfg = compose("train_config", ["constants.context_dim=512"])
    if published:  # the published run folders have no autoencoder group
        train_cfg = OmegaConf.create({k: v for k, v in OmegaConf.to_container(train_cfg).items() if k != "autoencoder"})
    OmegaConf.save(train_cfg, run / ".hydra" / "config.yaml")
    rng = np.random.default_rng(0)
    (run / "checkpoints" / "ema_averaged_model.ckpt").write_bytes(rng.bytes(50_000))
    decoder = root / "weights" / "decoder.pt"
    decoder.parent.mkdir()
    decoder.write_bytes(rng.bytes(20_000))
    contexts, _ = contexts_from_config(compose("contexts_config", [
        f"paths.output_root={root}", "contexts.n=4", "contexts.seed=7", "contexts.name=ids"]))
    sample_cfg = compose("sample_config", [
        f"checkpoint.path={run}", f"sampling.contexts_file={contexts}", f"paths.vq_decoder={decoder}",
        "sampling.sampler=ddim", "sampling.steps=4", "sampling.n_contexts=3", "sampling.n_samples_per_context=5",
        "device=cpu"])
    samples = root / "samples" / "tiny-run" / "ids"
    for name, n in TILES.items():
        write_block(samples, name, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    OmegaConf.save(sample_cfg, samples.parent / "ids.yaml")  # what sample_from_config writes
    aligned = root / "aligned"
    align_identities(samples, aligned, StandInAligner(), True, size=SIZE, batch_size=4,
                     settings={"min_face_size": 20, "pad": 0.2})
    labels = np.repeat(np.arange(len(TILES)), list(TILES.values()))
    embeddings = rng.standard_normal((len(labels), 128)).astype(np.float32)
    evaluation = root / "evaluation"
    real = EmbeddingSet([f"real{k}" for k in range(5)], rng.standard_normal((5, 128)).astype(np.float32))
    evaluate_sets(EmbeddingSet([f"{i}/{k}" for k, i in enumerate(labels)], embeddings, labels), evaluation, real,
                  impostor_pairs=None, leakage_threshold=-1.0)  # every identity "leaks": the limit names the count
    filters = root / "filter_report.json"
    FilterReport(settings={"image": {"mode": "cosine", "threshold": 0.3}}, source={"embeddings": "emb.npz"},
                 counts={"image_outliers": 0, "kept_identities": 3},
                 identities={name: {"images": n, "kept": list(range(n)), "consistency": 0.9} for name, n in TILES.items()},
                 dropped_images=[], dropped_identities=[]).save(filters)
    return {"run": run, "decoder": decoder, "contexts": contexts, "samples": samples, "sample_cfg": samples.parent /
            "ids.yaml", "aligned": aligned, "evaluation": evaluation / "report.json", "filters": filters}


def front_matter(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


def count_on_disk(folder: Path) -> tuple[int, int]:
    folders = [p for p in folder.iterdir() if p.is_dir()]
    return len(folders), sum(len(list(p.glob("*.png"))) for p in folders)


@pytest.mark.parametrize("published", [False, True], ids=["own-run", "published-run"])
def test_split_card_every_field_from_the_files(tmp_path: Path, published: bool) -> None:
    chain = make_chain(tmp_path, published)
    dataset = tmp_path / "dataset"
    split_identities(chain["aligned"], dataset, evaluation_report=chain["evaluation"], filter_report=chain["filters"])
    card = json.loads((dataset / CARD_JSON).read_text())

    identities, images = count_on_disk(dataset)
    assert (identities, images) == (3, 12)  # tiles without a face are resized, so every tile is kept
    assert card["dataset"]["identities"] == identities and card["dataset"]["images"] == images
    assert card["dataset"]["images_per_identity"] == {"min": 3, "max": 5}
    assert card["dataset"]["image_size"] == SIZE and card["dataset"]["format"] == "folders"
    assert card["dataset"]["size_category"] == "n<1K"

    generator = card["generator"]
    ckpt = chain["run"] / "checkpoints" / "ema_averaged_model.ckpt"
    assert generator["checkpoint"] == {"file": ckpt.name, "path": str(ckpt.resolve()), "bytes": 50_000,
                                       "sha256": sha256(ckpt)}
    assert generator["vq_decoder"]["sha256"] == sha256(chain["decoder"])
    assert generator["vq_decoder"]["file"] == "decoder.pt"
    assert generator["run_config"] == OmegaConf.to_container(OmegaConf.load(chain["run"] / ".hydra" / "config.yaml"),
                                                             resolve=True)
    assert (generator["run_name"], generator["which"], generator["latent_diffusion"]) == ("tiny-run", "ema", True)
    assert generator["samples_config"] == str(chain["sample_cfg"].resolve())

    sample_cfg = OmegaConf.to_container(OmegaConf.load(chain["sample_cfg"]), resolve=True)
    assert card["sampling"] == {**sample_cfg["sampling"], "device": "cpu"}
    assert card["sampling"]["sampler"] == "ddim" and card["sampling"]["steps"] == 4

    contexts = card["contexts"]
    assert contexts["file"]["sha256"] == sha256(chain["contexts"]) and contexts["file"]["file"] == "ids.npy"
    assert (contexts["source"], contexts["seed"]) == ("synthetic_uniform", 7)
    assert contexts["settings"]["n"] == 4

    report = json.loads((chain["aligned"] / "alignment_report.json").read_text())
    assert report["input_dir"] == str(chain["samples"].resolve())
    # MTCNN calls of >= 4 tiles: identity 0 (4 tiles, one "no face"), then 1 and 2 together (8 tiles, two)
    assert card["alignment"]["totals"] == report["totals"] == {"detected": 9, "resized": 3, "dropped": 0, "unreadable": 0,
                                                                "identities": 3}
    assert card["alignment"]["settings"]["min_face_size"] == 20 and card["alignment"]["settings"]["size"] == SIZE

    assert card["filters"]["dropped"] == {"image_outliers": 0, "kept_identities": 3}
    assert card["filters"]["settings"] == {"image": {"mode": "cosine", "threshold": 0.3}}
    assert card["filters"]["kept_images"] == 12
    assert card["filters"]["report"]["sha256"] == sha256(chain["filters"])
    evaluation = json.loads(chain["evaluation"].read_text())
    assert {k: card["identity_quality"][k] for k in evaluation} == evaluation
    assert card["identity_quality"]["report"]["sha256"] == sha256(chain["evaluation"])
    assert evaluation["leakage"]["n_leaked"] == 3
    assert any(item.startswith("Leakage against real: 3 identity centres above cosine -1.0") for item in card["limits"])
    assert any(item.startswith("3 of 12 generated images had no detected face") for item in card["limits"])

    assert [c["folder"] for c in card["provenance"]["chain"]] == [
        str(p.resolve()) for p in (dataset, chain["aligned"], chain["samples"])]
    assert card["made_by"]["tool"] == "split_identity_blocks.py" and card["made_by"]["settings"]["min_images"] == 1

    applies = {entry["component"].split(" (")[0]: entry["applies"] for entry in card["licences"]}
    assert applies["FFHQ"] is True and applies["CompVis latent-diffusion VQ-f4 first stage"] is True
    assert applies["IDiff-Face published weights"] is published
    assert [m["model"] for m in card["fr_models"]] == ["elasticface", "dlib"]  # 512-d contexts, 128-d evaluation
    assert card["license"] == "cc-by-nc-sa-4.0"
    assert card["notes"] == {}

    meta, body = front_matter(dataset / CARD_MD)
    assert meta["license"] == "cc-by-nc-sa-4.0" and meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["image-classification"] and "synthetic" in meta["tags"]
    assert meta["pretty_name"] == card["pretty_name"]
    positions = [body.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert sha256(ckpt) in body and "## Missing facts" not in body


def test_export_cards_inherit_the_chain_without_hashing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = make_chain(tmp_path)
    dataset = tmp_path / "dataset"
    split_identities(chain["aligned"], dataset, evaluation_report=chain["evaluation"])
    upstream = json.loads((dataset / CARD_JSON).read_text())
    hashed: list[Path] = []
    real_sha256 = card_module.sha256_file
    monkeypatch.setattr(card_module, "sha256_file", lambda path: hashed.append(Path(path)) or real_sha256(path))

    for fmt in ("rec", "webdataset"):
        out = tmp_path / fmt
        summary = export_dataset(compose("export_config", [
            f"export.input={dataset}", f"export.output={out}", f"export.format={fmt}", f"export.image_size={SIZE}",
            "export.identities_per_shard=2"]))
        card = json.loads((out / CARD_JSON).read_text())
        for field in ("generator", "sampling", "contexts", "alignment", "identity_quality", "filters"):
            assert card[field] == upstream[field], field
        assert (card["dataset"]["identities"], card["dataset"]["images"]) == (3, 12)
        assert card["dataset"]["format"] == fmt and card["dataset"]["image_format"] == "jpg"
        assert card["dataset"]["files"] == [{**f, "bytes": (out / f["file"]).stat().st_size}
                                            for f in card["dataset"]["files"]]
        if fmt == "rec":
            assert [f["file"] for f in card["dataset"]["files"]] == ["train.rec", "train.idx", "property"]
            assert card["dataset"]["rec"] == summary["rec"]
        else:
            assert sum(f["images"] for f in card["dataset"]["files"]) == 12
        assert card["provenance"]["chain"][0] == {"folder": str(out.resolve()), "via": CARD_JSON,
                                                  "step": "export_dataset.py"}
        assert card["provenance"]["chain"][1:] == upstream["provenance"]["chain"]
        assert "shard_index" not in card["made_by"]["settings"] and card["made_by"]["input"] == str(dataset.resolve())
        meta, _ = front_matter(out / CARD_MD)
        assert meta["license"] == "cc-by-nc-sa-4.0"
        written = {name: (out / name).read_bytes() for name in (CARD_JSON, CARD_MD)}
        export_dataset(compose("export_config", [  # a finished export run again: the same card, byte for byte
            f"export.input={dataset}", f"export.output={out}", f"export.format={fmt}", f"export.image_size={SIZE}",
            "export.identities_per_shard=2"]))
        assert {name: (out / name).read_bytes() for name in (CARD_JSON, CARD_MD)} == written
    assert hashed == []  # every hash came from the input's card

    # Straight from the aligned blocks, the chain is traced again and gives the same facts.
    out = tmp_path / "from_blocks"
    export_dataset(compose("export_config", [f"export.input={chain['aligned']}", f"export.output={out}",
                                             f"export.image_size={SIZE}", f"export.card.evaluation_report="
                                             f"{chain['evaluation']}"]))
    card = json.loads((out / CARD_JSON).read_text())
    assert card["generator"] == upstream["generator"] and card["contexts"] == upstream["contexts"]
    assert sorted(set(hashed)) == sorted(p.resolve() for p in (
        chain["run"] / "checkpoints" / "ema_averaged_model.ckpt", chain["decoder"], chain["contexts"],
        chain["evaluation"]))
    assert len(hashed) == 4  # each file once


def test_missing_links_are_null_with_a_note(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    (chain["run"] / "checkpoints" / "ema_averaged_model.ckpt").unlink()
    chain["contexts"].with_suffix(".yaml").unlink()
    split_identities(chain["aligned"], tmp_path / "d1")
    card = json.loads((tmp_path / "d1" / CARD_JSON).read_text())
    assert card["generator"]["checkpoint"] is None
    assert "ema_averaged_model.ckpt" in card["notes"]["generator.checkpoint"]
    assert card["generator"]["vq_decoder"]["sha256"] == sha256(chain["decoder"])
    assert card["contexts"]["source"] is None and card["contexts"]["seed"] is None
    assert "ids.yaml" in card["notes"]["contexts.source"]
    assert card["identity_quality"] is None and "evaluation report" in card["notes"]["identity_quality"]
    assert card["filters"] is None and "filters" in card["notes"]
    _, body = front_matter(tmp_path / "d1" / CARD_MD)
    assert "## Missing facts" in body and "`generator.checkpoint`" in body and "Not measured." in body

    # An alignment report of an older align.py (no input_dir): the samples and the generator are unknown.
    report_path = chain["aligned"] / "alignment_report.json"
    report = json.loads(report_path.read_text())
    del report["input_dir"]
    report_path.write_text(json.dumps(report))
    split_identities(chain["aligned"], tmp_path / "d2")
    card = json.loads((tmp_path / "d2" / CARD_JSON).read_text())
    assert card["alignment"]["totals"] == report["totals"]
    assert card["generator"] is None and card["sampling"] is None and card["contexts"] is None
    assert "does not record its input folder" in card["notes"]["provenance"]
    assert "chain ends before the samples" in card["notes"]["generator"]
    assert card["license"] == "unknown" and "license" in card["notes"]
    meta, _ = front_matter(tmp_path / "d2" / CARD_MD)
    assert meta["license"] == "unknown"

    # No alignment report and no <samples>.yaml: the chain ends at the input folder.
    chain["sample_cfg"].unlink()
    split_identities(chain["samples"], tmp_path / "d3")
    card = json.loads((tmp_path / "d3" / CARD_JSON).read_text())
    assert card["provenance"]["chain"][-1] == {"folder": str(chain["samples"].resolve()), "via": None, "step": None}
    assert "ids.yaml" in card["notes"]["provenance"] and card["alignment"] is None and "alignment" in card["notes"]


def test_a_derived_folder_links_back_and_update_card_adds_a_later_report(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    bigger = tmp_path / "bigger"  # a step between sampling and alignment (the demo enlarges its 32 px samples)
    for identity, source in discover_identities(chain["samples"]).items():
        write_block(bigger, identity, np.stack([cv2.resize(t, (64, 64)) for t in read_identity(source)]))
    record_derivation(bigger, chain["samples"], "enlarge", {"size": 64})
    align_identities(bigger, tmp_path / "aligned2", StandInAligner(), False, size=SIZE)
    dataset = tmp_path / "dataset"
    split_identities(tmp_path / "aligned2", dataset)
    card = json.loads((dataset / CARD_JSON).read_text())
    assert card["provenance"]["chain"][2:] == [
        {"folder": str(bigger.resolve()), "via": "provenance.json", "step": "enlarge", "settings": {"size": 64}},
        {"folder": str(chain["samples"].resolve()), "via": "ids.yaml", "step": "sample.py"}]
    assert card["generator"]["checkpoint"]["sha256"] == sha256(chain["run"] / "checkpoints" / "ema_averaged_model.ckpt")
    # one MTCNN call of all 12 tiles; tiles 2, 5, 8, 11 have "no face" and are dropped
    assert card["alignment"]["totals"]["dropped"] == 4 and card["dataset"]["images"] == 8
    assert any(item.startswith("4 generated images without a detected face were dropped") for item in card["limits"])
    assert card["identity_quality"] is None and "identity_quality" in card["notes"]

    updated = update_card(dataset, evaluation_report=chain["evaluation"])  # encode.py + evaluate.py ran later
    assert json.loads((dataset / CARD_JSON).read_text()) == updated
    assert updated["identity_quality"]["report"]["sha256"] == sha256(chain["evaluation"])
    assert not any(field.startswith("identity_quality") for field in updated["notes"])
    assert {k: updated[k] for k in ("dataset", "made_by", "provenance", "generator")} == {
        k: card[k] for k in ("dataset", "made_by", "provenance", "generator")}
    assert update_card(dataset) == updated  # the named report is kept
    with pytest.raises(FileNotFoundError, match=r"nowhere/dataset_card\.json does not exist"):
        update_card(tmp_path / "nowhere")


def test_bad_reports_are_refused_in_one_line(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dropped": 3}))
    with pytest.raises(ValueError, match=r"bad\.json is not a filter report") as err:
        split_identities(chain["aligned"], tmp_path / "d", filter_report=bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"bad\.json: expected evaluate\.py's report\.json"):
        split_identities(chain["aligned"], tmp_path / "d", evaluation_report=bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match=r"bad\.json is not a readable filter report"):
        split_identities(chain["aligned"], tmp_path / "d", filter_report=bad)


@pytest.mark.parametrize("which", ["ema", "raw", "125000"])
def test_checkpoint_file_names_match_sample_py(tmp_path: Path, which: str) -> None:
    assert checkpoint_file(tmp_path, which) == checkpoint_path(tmp_path, which)


def test_fr_models_by_dimension_one_licence_row_per_model() -> None:
    notes: dict[str, str] = {}
    card = {"generator": {"run_config": {"constants": {"context_dim": 128}, "autoencoder": {}},
                          "latent_diffusion": False},
            "identity_quality": {"dataset": {"dim": 128}}, "alignment": None}
    described = describe_licences(card, notes.setdefault)
    assert [m["model"] for m in described["fr_models"]] == ["dlib", "dlib"]
    rows = [row for row in described["licences"] if row["component"].startswith("dlib")]
    assert len(rows) == 1 and rows[0]["because"].count("128") == 2
    assert described["license"] == "unknown" and "license" in notes  # a pixel-space run of unrecorded images
    card["identity_quality"]["dataset"]["dim"] = 64
    described = describe_licences(card, notes.setdefault)
    assert [m["model"] for m in described["fr_models"]] == ["dlib", None]
    assert any(field.startswith("fr_models.") and "64" in why for field, why in notes.items())
    assert size_category(999) == "n<1K" and size_category(15_000_000) == "10M<n<100M"
