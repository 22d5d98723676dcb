"""encode.py, evaluate.py and evaluate_lfw.py: layouts, resume, reports, bad input, LFW pairs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedding.backends import FaceEmbedder
from embedding.encoding import encode, encode_dataset
from embedding.files import EmbeddingSet, load_embeddings, save_embeddings
from evaluation.report import evaluate, evaluate_lfw_set, evaluate_sets, read_lfw_pairs
from utils.config import compose
from utils.image_io import write_block

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class MeanColour(FaceEmbedder):
    """Deterministic stand-in backend: (mean R, G, B, 1) of each image; counts the images it saw."""

    embedding_dim = 4

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(batch_size=8)
        self.seen = 0
        self.fail_after = fail_after

    def _prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self.fail_after is not None and self.seen + len(images) > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.seen += len(images)
        return np.stack([np.r_[im.reshape(-1, 3).mean(axis=0) / 255.0, 1.0] for im in images])

    def _features(self, batch: np.ndarray, flip: bool) -> np.ndarray:
        return batch.astype(np.float32)


def _class_folders(root: Path, n_ids: int = 6, per_id: int = 3, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n_ids):
        (root / f"id{i}").mkdir(parents=True)
        for k in range(per_id):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"id{i}" / f"{k}.png")
    return root


def test_encode_class_folders_blocks_and_single_files(tmp_path: Path) -> None:
    folders = _class_folders(tmp_path / "folders")
    out = encode_dataset(folders, tmp_path / "f.npz", MeanColour(), identities_per_shard=4)
    got = load_embeddings(out)
    assert got.names[:4] == ["id0/0", "id0/1", "id0/2", "id1/0"] and len(got) == 18
    np.testing.assert_array_equal(got.labels, np.repeat(np.arange(6), 3))
    image = np.asarray(Image.open(folders / "id1" / "0.png"))
    np.testing.assert_allclose(got.embeddings[3], MeanColour().embed([image])[0], atol=1e-6)
    assert not (tmp_path / "f.npz.shards").exists()

    blocks = tmp_path / "blocks"
    rng = np.random.default_rng(1)
    write_block(blocks, "a", rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    write_block(blocks, "b", rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    got = load_embeddings(encode_dataset(blocks, tmp_path / "b.npz", MeanColour()))
    assert got.names == [f"a/{k}" for k in range(6)] + [f"b/{k}" for k in range(4)]
    np.testing.assert_array_equal(got.labels, [0] * 6 + [1] * 4)

    original = tmp_path / "original"  # an original 2x2 block of 16 px tiles without a grid tag
    original.mkdir()
    Image.fromarray(rng.integers(1, 256, (32, 32, 3), dtype=np.uint8)).save(original / "7.png")
    assert load_embeddings(encode_dataset(original, tmp_path / "o.npz", MeanColour(), tile_size=16)).names == [
        f"7/{k}" for k in range(4)
    ]

    singles = tmp_path / "singles"
    singles.mkdir()
    for stem in ("00001", "00002"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(singles / f"{stem}.png")
    got = load_embeddings(encode_dataset(singles, tmp_path / "s.pt", MeanColour()))
    assert got.names == ["00001", "00002"] and got.labels is None  # the original {stem: embedding} dict
    assert load_embeddings(encode_dataset(singles / "00002.png", tmp_path / "one.npz", MeanColour())).names == ["00002"]


def test_encode_resumes_after_a_kill_and_refuses_a_changed_input(tmp_path: Path) -> None:
    folders = _class_folders(tmp_path / "folders")
    reference = load_embeddings(encode_dataset(folders, tmp_path / "ref.npz", MeanColour()))
    out = tmp_path / "run.npz"
    with pytest.raises(KeyboardInterrupt):  # killed while embedding the second shard (identities 2, 3)
        encode_dataset(folders, out, MeanColour(fail_after=7), identities_per_shard=2)
    shards = out.with_name("run.npz.shards")
    assert sorted(p.name for p in shards.glob("shard_*.npz")) == ["shard_000000.npz"] and not out.exists()
    (shards / ".shard_000001.partial.npz").write_bytes(b"half a file")  # a temporary file left by the kill
    resumed = MeanColour()
    encode_dataset(folders, out, resumed, identities_per_shard=2)
    assert resumed.seen == 12  # 4 of 6 identities x 3 images: shard 0 was not redone
    got = load_embeddings(out)
    assert got.names == reference.names
    np.testing.assert_array_equal(got.labels, reference.labels)
    np.testing.assert_allclose(got.embeddings, reference.embeddings, atol=1e-6)

    with pytest.raises(KeyboardInterrupt):
        encode_dataset(folders, tmp_path / "again.npz", MeanColour(fail_after=7), identities_per_shard=2)
    shutil.copytree(folders / "id0", folders / "id9")
    with pytest.raises(
        ValueError,
        match=r"again.npz.shards holds shards of a different run \(differs in \['identities_sha256', 'n_identities'\]\)",
    ):
        encode_dataset(folders, tmp_path / "again.npz", MeanColour(), identities_per_shard=2)


def test_encode_bad_input_one_line(tmp_path: Path) -> None:
    folders = _class_folders(tmp_path / "folders", n_ids=2)
    (folders / "id_empty").mkdir()
    with pytest.raises(
        ValueError, match=r"^encode.input=.*folders: empty identity: class folder\(s\) \['id_empty'\] hold no images$"
    ):
        encode_dataset(folders, tmp_path / "x.npz", MeanColour())
    with pytest.raises(FileNotFoundError, match="encode.input=.*nowhere does not exist"):
        encode_dataset(tmp_path / "nowhere", tmp_path / "x.npz", MeanColour())
    with pytest.raises(ValueError, match="must end in .npz"):
        encode_dataset(folders, tmp_path / "x.csv", MeanColour())


def _clustered(
    n_ids: int, per_id: int, dim: int, spread: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels, centres


def test_evaluate_sets_writes_report_markdown_and_plots(tmp_path: Path) -> None:
    emb, labels, centres = _clustered(30, 5, 64, 0.3, seed=0)
    names = [f"id{label}/{k % 5}" for k, label in enumerate(labels)]
    synthetic = EmbeddingSet(names, emb.astype(np.float32), labels)
    real = EmbeddingSet(
        ["ffhq_a", "ffhq_b"], np.stack([centres[4], np.random.default_rng(9).normal(size=64)]).astype(np.float32)
    )
    report = evaluate_sets(
        synthetic, tmp_path, real, impostor_pairs=None, uniqueness_threshold=0.6, leakage_threshold=0.8
    )
    v = report["verification"]
    assert v["eer"] == 0.0 and v["n_genuine"] == 30 * 10 and v["n_impostor"] == 150 * 149 // 2 - 300
    assert report["identities"]["uniqueness"] == 1.0 and report["identities"]["consistency"] == 1.0
    assert report["leakage"]["n_leaked"] == 1 and report["leakage"]["most_similar"][0].startswith("id4 ~ ffhq_a")
    assert json.loads((tmp_path / "report.json").read_text())["dataset"]["n_identities"] == 30
    markdown = (tmp_path / "report.md").read_text()
    assert "| eer | 0.000 % |" in markdown and "## leakage" in markdown
    for png in ("score_histograms.png", "det_curve.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def _write_sets(tmp_path: Path, real_dim: int = 16) -> tuple[Path, Path]:
    emb, labels, _ = _clustered(20, 4, 16, 0.5, seed=1)
    synthetic = save_embeddings(tmp_path / "syn.npz", [f"{l}/{k}" for k, l in enumerate(labels)], emb, labels)
    real = save_embeddings(
        tmp_path / "real.npz", [f"r{k}" for k in range(10)], np.random.default_rng(2).normal(size=(10, real_dim))
    )
    return synthetic, real


def test_evaluate_from_config(tmp_path: Path) -> None:
    synthetic, real = _write_sets(tmp_path)
    cfg = compose(
        "evaluate_config",
        [
            f"evaluate.synthetic={synthetic}",
            f"evaluate.real={real}",
            f"evaluate.output_dir={tmp_path / 'eval'}",
            "evaluate.impostor_pairs=5000",
        ],
    )
    report = evaluate(cfg)
    assert report["verification"]["n_impostor"] == 5000 and report["leakage"]["n_real"] == 10
    assert (tmp_path / "eval" / "report.md").is_file()


def test_evaluate_bad_input_one_line(tmp_path: Path) -> None:
    synthetic, real = _write_sets(tmp_path, real_dim=8)
    cfg = compose(
        "evaluate_config",
        [f"evaluate.synthetic={synthetic}", f"evaluate.real={real}", f"evaluate.output_dir={tmp_path}"],
    )
    with pytest.raises(
        ValueError, match=r"^embeddings of different dimensions: .*syn.npz has 16-d embeddings, .*real.npz has 8-d$"
    ):
        evaluate(cfg)
    np.savez(
        tmp_path / "bad_labels.npz",
        names=np.array(["a", "b", "c"]),
        embeddings=np.eye(3, dtype=np.float32),
        labels=np.array([0, 1]),
    )
    with pytest.raises(ValueError, match=r"^.*bad_labels.npz: labels must have shape \(3,\), found \(2,\)$"):
        load_embeddings(tmp_path / "bad_labels.npz")
    gap = EmbeddingSet(["a/0", "a/1", "c/0", "c/1"], np.eye(4, dtype=np.float32), np.array([0, 0, 2, 2]))
    with pytest.raises(
        ValueError, match=r"^gap.npz: empty identity: labels cover 0..2 but identities \[1\] have no embeddings$"
    ):
        evaluate_sets(gap, tmp_path, synthetic_name="gap.npz")
    with pytest.raises(ValueError, match="has no identity labels"):
        evaluate_sets(EmbeddingSet(["a", "b"], np.eye(2, dtype=np.float32)), tmp_path)


def test_evaluate_cli_prints_one_error_line(tmp_path: Path) -> None:
    synthetic, real = _write_sets(tmp_path, real_dim=8)
    result = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            f"evaluate.synthetic={synthetic}",
            f"evaluate.real={real}",
            f"evaluate.output_dir={tmp_path}",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, output
    assert len(output) == 1 and output[0].startswith("error: embeddings of different dimensions:"), output
    assert "syn.npz has 16-d embeddings" in output[0] and "real.npz has 8-d" in output[0]


def _lfw_pairs(path: Path) -> Path:
    """2 folds x (3 genuine + 3 impostor) pairs over 4 people with 2-3 images each."""
    lines = [
        "2\t3",
        "Ann\t1\t2",
        "Bob\t1\t2",
        "Cy\t1\t2",
        "Ann\t1\tBob\t1",
        "Cy\t2\tDee\t1",
        "Bob\t2\tDee\t2",
        "Ann\t2\t3",
        "Dee\t1\t2",
        "Cy\t1\t3",
        "Ann\t3\tCy\t3",
        "Bob\t1\tDee\t1",
        "Ann\t2\tDee\t2",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_lfw_pairs_accuracy_and_missing(tmp_path: Path) -> None:
    pairs_path = _lfw_pairs(tmp_path / "pairs.txt")
    pairs, is_same, n_folds = read_lfw_pairs(pairs_path)
    assert n_folds == 2 and pairs[0] == ("Ann_0001", "Ann_0002") and pairs[3] == ("Ann_0001", "Bob_0001")
    np.testing.assert_array_equal(is_same, [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3)
    people = {"Ann": 3, "Bob": 2, "Cy": 3, "Dee": 2}
    rng = np.random.default_rng(0)
    names, vectors = [], []
    for person_index, (person, count) in enumerate(people.items()):
        for i in range(1, count + 1):
            names.append(f"{person}/{person}_{i:04d}")
            vectors.append(np.eye(8)[person_index] + 0.01 * rng.normal(size=8))  # genuine distances < 0.01
    embeddings = EmbeddingSet(names, np.asarray(vectors, dtype=np.float32))
    report = evaluate_lfw_set(embeddings, pairs_path, tmp_path / "out")
    assert report["lfw"]["accuracy_mean_percent"] == 100.0 and report["verification"]["eer"] == 0.0
    # insightface's rule by default: the first grid distance above the training genuines, 0.01
    assert report["lfw"]["kfold_rule"] == "insightface" and report["lfw"]["thresholds_on"] == "squared_l2_distance"
    assert report["lfw"]["fold_thresholds"] == [0.01, 0.01]
    assert report["verification"]["error_rate_definition"] == "pyeer"
    midpoint = evaluate_lfw_set(embeddings, pairs_path, tmp_path / "mid", kfold_rule="midpoint", error_rates="bounded")
    assert midpoint["lfw"]["kfold_rule"] == "midpoint" and midpoint["lfw"]["accuracy_mean_percent"] == 100.0
    assert 0.0 < midpoint["lfw"]["fold_thresholds"][0] < 1.0  # a cosine between the classes
    assert midpoint["verification"]["error_rate_definition"] == "bounded"
    assert (tmp_path / "out" / "det_curve.png").is_file() and (tmp_path / "out" / "report.md").is_file()
    crossed = evaluate_lfw_set(embeddings, pairs_path, tmp_path / "ref", reference=embeddings)
    assert crossed["verification"]["eer"] == 0.0

    partial = EmbeddingSet(names[1:], embeddings.embeddings[1:])  # Ann_0001 missing: 2 pairs
    with pytest.raises(
        ValueError, match=r"2 of 12 LFW pairs name images without embeddings \(e.g. Ann_0001, Ann_0002\)"
    ):
        evaluate_lfw_set(partial, pairs_path, tmp_path / "p")
    assert evaluate_lfw_set(partial, pairs_path, tmp_path / "p", on_missing="skip")["dataset"]["skipped_pairs"] == 2
    (tmp_path / "broken.txt").write_text("2\t3\nAnn\t1\n")
    with pytest.raises(ValueError, match=r"broken.txt:2: expected 'name i j' or 'name1 i name2 j', found 'Ann 1'"):
        read_lfw_pairs(tmp_path / "broken.txt")


def test_encode_and_evaluate_real_faces_with_dlib(tmp_path: Path) -> None:
    """End to end on the demo photos: dlib (MTCNN on each photo) -> class folders -> EER 0, Obama genuine."""
    faces = PROJECT_ROOT / "data" / "demo" / "faces"
    root = tmp_path / "classes"
    for path in sorted(faces.glob("*.png")):
        person, k = path.stem.rsplit("_", 1)
        (root / person).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / person / f"{k}.png")
    out = tmp_path / "demo_dlib.npz"
    cfg = compose(
        "encode_config",
        [
            f"encode.input={root}",
            f"encode.output={out}",
            "device=cpu",
            "fr_backend.name=dlib",
            "fr_backend.dlib.input=photo",
            "fr_backend.batch_size=8",
        ],
    )
    got = load_embeddings(encode(cfg))
    assert got.dim == 128 and len(got) == 5
    report = evaluate_sets(
        got, tmp_path / "eval", impostor_pairs=None, uniqueness_threshold=0.9, consistency_threshold=0.9
    )
    assert report["verification"]["n_genuine"] == 3 and report["verification"]["eer"] == 0.0
    assert report["identities"]["uniqueness"] == 1.0


def test_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/evaluate.py at a toy size: the last stdout line is one JSON object."""
    from benchmarks.evaluate import main as benchmark

    result = benchmark(
        ["--identities", "20", "--images", "5", "--dim", "32", "--impostor-pairs", "1000", "--real", "50"]
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == result and result["genuine_pairs"] == 20 * 10 and result["impostor_pairs"] == 1000
