"""Every script through its real command line: bad input is one ``error:`` line naming the file or key, exit status 2.

Each case runs the script as a subprocess from the project root with every output path in tmp_path.
Unexpected errors keep their traceback (exit status 1); the older argparse command lines still work.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embedding.files import save_embeddings
from models.iresnet import iresnet18
from utils.image_io import read_image, write_block

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run(script: str | Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    """``python <script> <args>`` from the project root; outputs of a run folder go to ``tmp``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, str(script), *args, f"hydra.run.dir={tmp / 'run'}"], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def assert_one_error_line(result: subprocess.CompletedProcess, *named: str) -> str:
    """Exit status 2, stderr is exactly one ``error:`` line that contains every string of ``named``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.stdout + result.stderr
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A missing path, an empty folder, an empty contexts file and a corrupt embedding file."""
    (tmp_path / "empty").mkdir()
    save_embeddings(tmp_path / "no_contexts.npz", [], np.zeros((0, 8), np.float32))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    return {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "no_contexts": tmp_path / "no_contexts.npz",
            "corrupt": tmp_path / "corrupt.npz"}


CASES = {
    # script: (arguments with {placeholders} for the files fixture and tmp, strings the error line must contain)
    "main missing data": ("main.py", ["paths.data_root={missing}"],
                          ["{missing}/ffhq_128", "dataset.images_root", "extract_face_embeddings_from_dir.py"]),
    "main bad setting": ("main.py", ["training.steps=-5"], ["training.steps must be an integer", "found -5"]),
    "main unknown key": ("main.py", ["training.stepz=5"], ["Could not override 'training.stepz'"]),
    "main unknown option": ("main.py", ["model=unet_big"], ["model", "unet_big"]),
    "sample empty contexts": ("sample.py", ["sampling.contexts_file={no_contexts}"], ["{no_contexts} holds no contexts"]),
    "sample missing run": ("sample.py", ["checkpoint.path={missing}", "sampling.contexts_file={contexts}",
                                         "sampling.n_contexts=null"],
                           ["checkpoint.path {missing} is not a folder"]),
    "align empty input": ("align.py", ["align.input_dir={empty}", "align.output_dir={tmp}/aligned"],
                          ["align.input_dir={empty} holds no identity"]),
    "align missing input": ("align.py", ["align.input_dir={missing}"], ["{missing} does not exist"]),
    "align bad setting": ("align.py", ["align.pad=nan"], ["align.pad must be a finite number in [0, 1], found nan"]),
    "contexts corrupt file": ("create_sample_identity_contexts.py",
                              ["contexts.source=authentic", "contexts.embeddings_file={corrupt}", "contexts.out_dir={tmp}"],
                              ["{corrupt} is not a readable .npz"]),
    "contexts bad setting": ("create_sample_identity_contexts.py", ["contexts.separability_threshold=nan"],
                             ["contexts.separability_threshold must be", "found nan"]),
    "contexts empty folder": ("create_sample_identity_contexts.py",
                              ["contexts.source=from_images", "contexts.images_dir={empty}", "fr_backend@contexts.fr_backend=default"],
                              ["contexts.images_dir={empty} holds no images"]),
    "split missing input (old arguments)": ("split_identity_blocks.py", ["{missing}", "{tmp}/out", "--identities", "2",
                                                                         "--images-per-identity", "2"], ["{missing}"]),
    "split empty input": ("split_identity_blocks.py", ["split.input_dir={empty}", "split.output_dir={tmp}/out"],
                          ["split.input_dir={empty} holds no identity"]),
    "split bad setting (old arguments)": ("split_identity_blocks.py", ["{empty}", "{tmp}/out", "--identities", "-1"],
                                          ["split.identities must be an integer", "found -1"]),
    "evaluate_fr missing checkpoint (old arguments)": ("evaluate_fr.py", ["--checkpoint", "{missing}.pth", "--bin-dir", "{empty}"],
                                                       ["{missing}.pth does not exist"]),
    "evaluate_fr no benchmark": ("evaluate_fr.py", ["evaluate_fr.checkpoint={checkpoint}", "eval.bin_dir={empty}",
                                                    "fr/backbone=iresnet18", "device=cpu"], ["is in eval.bin_dir={empty}"]),
    "train_fr missing data": ("train_fr.py", ["data.root={missing}", "train.output_dir={tmp}/fr", "train.device=cpu"],
                              ["training data root {missing}"]),
    "train_fr bad setting": ("train_fr.py", ["fr.schedule.max_epochs=-1", "train.output_dir={tmp}/fr"],
                             ["fr.schedule.max_epochs must be an integer", "found -1"]),
    "encode missing input": ("encode.py", ["encode.input={missing}", "encode.output={tmp}/e.npz", "fr_backend.name=dlib"],
                             ["encode.input={missing} does not exist"]),
    "evaluate corrupt file": ("evaluate.py", ["evaluate.synthetic={corrupt}", "evaluate.output_dir={tmp}/ev"], ["{corrupt}"]),
    "evaluate_lfw missing pairs": ("evaluate_lfw.py", ["evaluate_lfw.pairs={missing}", "evaluate_lfw.embeddings={contexts}",
                                                       "evaluate_lfw.output_dir={tmp}/lfw"], ["{missing}"]),
    "extract empty folder": ("extract_face_embeddings_from_dir.py", ["input_dir={empty}", "output_file={tmp}/x.npz"],
                             ["input_dir={empty} holds no image"]),
    "demo bad setting": ("demo.py", ["demo.profiles.fast.samples_per_identity=1", "demo.fast=true"],
                         ["demo.profiles.fast.samples_per_identity must be an integer"]),
}


#: One case per script of the issue runs by default (a subprocess takes seconds); the others are marked slow.
DEFAULT_CASES = {"main missing data", "main unknown key", "sample empty contexts", "align empty input",
                 "contexts corrupt file", "split missing input (old arguments)", "evaluate_fr missing checkpoint (old arguments)"}


@pytest.mark.parametrize("case", [c if c in DEFAULT_CASES else pytest.param(c, marks=pytest.mark.slow) for c in sorted(CASES)])
def test_bad_input_is_one_line_and_exit_2(case: str, files: dict[str, Path], tmp_path: Path) -> None:
    script, args, named = CASES[case]
    save_embeddings(tmp_path / "contexts.npz", ["a", "b"], np.eye(2, 8, dtype=np.float32))
    if "{checkpoint}" in " ".join(args):
        torch.save(iresnet18().state_dict(), tmp_path / "r18.pth")
    values = {**{k: str(v) for k, v in files.items()}, "tmp": str(tmp_path), "contexts": str(tmp_path / "contexts.npz"),
              "checkpoint": str(tmp_path / "r18.pth")}
    result = run(script, *(a.format(**values) for a in args), tmp=tmp_path)
    assert_one_error_line(result, *(n.format(**values) for n in named))


def test_old_split_command_line_still_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for identity in ("a", "b", "c"):
        write_block(tmp_path / "in dir", identity, rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    result = run("split_identity_blocks.py", str(tmp_path / "in dir"), str(tmp_path / "out"), "--identities", "2",
                 "--images-per-identity", "3", tmp=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b", "dataset_card.json", "dataset_card.md"]
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["0.png", "1.png", "2.png"]
    assert read_image(tmp_path / "out" / "b" / "2.png").shape == (8, 8, 3)


def test_unexpected_errors_keep_their_traceback(tmp_path: Path) -> None:
    script = tmp_path / "buggy.py"
    script.write_text(
        "from cli.app import hydra_app\n\n\n"
        "@hydra_app('split_config')\n"
        "def main(cfg):\n"
        "    raise RuntimeError('a bug, not bad input')\n\n\n"
        "main()\n"
    )
    result = run(script, tmp=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: a bug, not bad input" in result.stderr
    assert "buggy.py" in result.stderr  # the frame of the bug is shown
