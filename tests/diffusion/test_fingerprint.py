"""sampling_fingerprint.json: what determines the images is recorded, a rerun with other settings is refused and
changes nothing on disk, a rerun with the same settings resumes and writes only what is missing."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from contexts.sources import save_original_contexts, synthetic_uniform
from diffusion.fingerprint import FINGERPRINT, claim_folder, file_sha256, fingerprint_differences
from diffusion.generation import sample_from_config
from diffusion.sampling_settings import SamplerSettings
from tests.diffusion.tiny_runs import CONTEXT_DIM, make_run
from utils.config import compose

pytestmark = pytest.mark.usefixtures("one_thread")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temporaries included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    """A tiny run folder, a contexts file of 3 identities, and the output root."""
    run = make_run(tmp_path / "tiny-run")
    contexts = save_original_contexts(tmp_path / "ids.npy", synthetic_uniform(3, CONTEXT_DIM, seed=1))
    return {"run": run, "contexts": contexts, "out": tmp_path / "out"}


def sample(setup: dict[str, Path], *overrides: str):
    return sample_from_config(compose("sample_config", [
        "preset=original", f"checkpoint.path={setup['run']}", f"sampling.contexts_file={setup['contexts']}",
        f"sampling.out_dir={setup['out']}", "sampling.n_contexts=null", "sampling.n_samples_per_context=2",
        "sampling.sampler=ddim", "sampling.steps=3", "sampling.seed=7", "sampling.batch_size=4",
        "sampling.micro_batch=4", "device=cpu", *overrides]))


def samples_of(setup: dict[str, Path]) -> Path:
    return setup["out"] / "tiny-run" / "ids"


def test_file_sha256_streams_the_file(tmp_path: Path) -> None:
    data = os.urandom(10_500)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f", chunk_size=1000) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_the_fingerprint_records_what_determines_the_images(setup: dict[str, Path]) -> None:
    negatives = save_original_contexts(setup["out"].parent / "neg.npy", synthetic_uniform(3, CONTEXT_DIM, seed=2))
    sample(setup, "sampling.negative.mode=file", f"sampling.negative.file={negatives}", "sampling.clip_x0=1.0")
    found = json.loads((samples_of(setup) / FINGERPRINT).read_text())
    settings = dataclasses.asdict(SamplerSettings(sampler="ddim", steps=3, clip_x0=1.0, micro_batch=4))
    negative_sha256 = hashlib.sha256(negatives.read_bytes()).hexdigest()
    settings["negative"] = {"mode": "file", "scale": 0.5, "file_sha256": negative_sha256}
    assert found == {
        "checkpoint_sha256": hashlib.sha256((setup["run"] / "checkpoints" / "ema_averaged_model.ckpt").read_bytes())
        .hexdigest(),
        "run_config_sha256": hashlib.sha256((setup["run"] / ".hydra" / "config.yaml").read_bytes()).hexdigest(),
        "vq_decoder_sha256": None,  # a pixel-space run
        "contexts_sha256": hashlib.sha256(setup["contexts"].read_bytes()).hexdigest(),
        "n_contexts": 3, "seed": 7, "n_samples_per_context": 2, "output": "block", "sampler": settings,
    }


def change_checkpoint(setup: dict[str, Path]) -> None:
    """Training went on: the same file name, other weights."""
    path = setup["run"] / "checkpoints" / "ema_averaged_model.ckpt"
    state = torch.load(path, weights_only=True)
    name = next(k for k in state if k.endswith("weight"))
    state[name] = state[name] + 0.01
    torch.save(state, path)


def change_contexts(setup: dict[str, Path]) -> None:
    """A new contexts file under the old name (same identity names, other vectors)."""
    save_original_contexts(setup["contexts"], synthetic_uniform(3, CONTEXT_DIM, seed=5))


@pytest.mark.parametrize("overrides, change, expected", [
    (["sampling.seed=8"], None, "seed: 7 there, 8 now"),
    (["sampling.sampler=dpmpp_2m"], None, "sampler.sampler: 'ddim' there, 'dpmpp_2m' now"),
    (["sampling.steps=4"], None, "sampler.steps: 3 there, 4 now"),
    (["sampling.guidance_scale=2.0"], None, "sampler.guidance_scale: 1.0 there, 2.0 now"),
    (["sampling.micro_batch=2"], None, "sampler.micro_batch: 4 there, 2 now"),
    (["sampling.n_contexts=2"], None, "n_contexts: 3 there, 2 now"),
    (["sampling.n_samples_per_context=3"], None, "n_samples_per_context: 2 there, 3 now"),
    (["sampling.output=files"], None, "output: 'block' there, 'files' now"),
    ([], change_contexts, "contexts_sha256: '"),
    ([], change_checkpoint, "checkpoint_sha256: '"),
], ids=["seed", "sampler", "steps", "guidance", "micro_batch", "n_contexts", "n_images", "output", "contexts",
        "checkpoint"])
def test_a_rerun_with_other_settings_is_refused_and_changes_nothing(setup: dict[str, Path], overrides: list[str],
                                                                    change, expected: str) -> None:
    sample(setup)
    (samples_of(setup) / "0.grid1x2.png").unlink()  # unfinished: a rerun with the old settings would write it
    if change is not None:
        change(setup)
    before = tree(setup["out"])  # the samples folder and its config copy beside it
    with pytest.raises(ValueError) as err:
        sample(setup, *overrides)
    message = str(err.value)
    assert "\n" not in message and expected in message
    assert message.startswith(f"{samples_of(setup)} holds samples made with other settings (")
    assert message.endswith(f"to keep both, choose another sampling.out_dir; to start over, delete {samples_of(setup)}")
    assert tree(setup["out"]) == before


def test_the_same_settings_resume_and_write_only_what_is_missing(setup: dict[str, Path]) -> None:
    sample(setup)
    folder = samples_of(setup)
    first = tree(folder)
    assert sorted(first) == sorted([FINGERPRINT, "0.grid1x2.png", "1.grid1x2.png", "2.grid1x2.png"])
    kept = {name: os.stat(folder / name) for name in (FINGERPRINT, "0.grid1x2.png", "2.grid1x2.png")}
    (folder / "1.grid1x2.png").unlink()
    summary = sample(setup, "sampling.batch_size=1")  # packing does not change images: same fingerprint
    assert (summary.skipped, summary.written, summary.images) == (2, 1, 2)
    assert tree(folder) == first
    for name, stat in kept.items():  # untouched, not rewritten with the same bytes
        now = os.stat(folder / name)
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert sample(setup).written == 0


def test_a_folder_of_samples_without_a_fingerprint_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / ".0.grid1x2.png.x1y2.tmp").write_bytes(b"a killed write")  # temporaries are not samples
    claim_folder(folder, {"seed": 1})
    assert json.loads((folder / FINGERPRINT).read_text()) == {"seed": 1}
    (folder / FINGERPRINT).unlink()
    (folder / "0.grid1x2.png").write_bytes(b"made by an older sample.py")
    with pytest.raises(ValueError, match=rf"{folder} holds files but no {FINGERPRINT} \(made by an older "
                                         r"sample.py\?\), so the settings of its samples are unknown; to keep both"):
        claim_folder(folder, {"seed": 1})
    assert not (folder / FINGERPRINT).exists()


def test_differences_name_nested_keys() -> None:
    there = {"seed": 1, "sampler": {"steps": 3, "negative": {"mode": None}}, "align": {"pad": 0.2}}
    now = {"seed": 1, "sampler": {"steps": 4, "negative": {"mode": "close"}}}
    assert fingerprint_differences(there, now) == [
        "align.pad: 0.2 there, '<absent>' now", "sampler.negative.mode: None there, 'close' now",
        "sampler.steps: 3 there, 4 now"]
    assert fingerprint_differences(now, json.loads(json.dumps(now))) == []
